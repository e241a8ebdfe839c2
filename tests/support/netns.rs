//! Network namespaces for partition tests (root, `ip` and `nft`): one namespace per member,
//! each with an address on a bridge in a hub namespace, and a leg from this process's
//! namespace onto the bridge, so the test and the clients it starts reach every member.
//! `isolate` drops, silently and both ways, what a member and the other members send each
//! other (nftables on their input hooks), while the test still reaches all of them; `heal`
//! lifts it. Dropping the `Network` deletes the namespaces and everything in them.
#![allow(dead_code)]

use std::process::Command;

pub struct Network {
    /// Names every namespace and the leg: `cmq<pid>`.
    prefix: String,
    /// The third byte of the subnet, 10.77.<subnet>.0/24.
    subnet: u8,
    members: usize,
}

/// Runs `ip` (or `ip netns exec <ns> nft`) with `args`; its stderr if it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program} does not run: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Network {
    /// Creates the hub, `members` namespaces and the leg. Fails (with what failed) where
    /// this process may not create namespaces or lacks `ip`.
    pub fn create(members: usize) -> Result<Network, String> {
        let pid = std::process::id();
        let network = Network {
            prefix: format!("cmq{pid}"),
            subnet: 20 + (pid % 200) as u8,
            members,
        };
        let hub = network.hub();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for member in 0..members {
            let netns = network.netns(member);
            let port = format!("m{member}");
            let address = format!("{}/24", network.address(member));
            run("ip", &["netns", "add", &netns])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &netns,
                ],
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &["-n", &netns, "addr", "add", &address, "dev", "eth0"],
            )?;
            run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        }
        let leg = network.leg();
        let address = format!("10.77.{}.254/24", network.subnet);
        run(
            "ip",
            &[
                "link", "add", &leg, "type", "veth", "peer", "name", "leg", "netns", &hub,
            ],
        )?;
        run("ip", &["addr", "add", &address, "dev", &leg])?;
        run("ip", &["link", "set", &leg, "up"])?;
        run(
            "ip",
            &["-n", &hub, "link", "set", "leg", "master", "br0", "up"],
        )?;
        Ok(network)
    }

    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// The leg's name in this process's namespace.
    fn leg(&self) -> String {
        format!("{}l", self.prefix)
    }

    /// The namespace of `member`.
    pub fn netns(&self, member: usize) -> String {
        format!("{}m{member}", self.prefix)
    }

    /// The address of `member` on the bridge.
    pub fn address(&self, member: usize) -> String {
        format!("10.77.{}.{}", self.subnet, member + 1)
    }

    /// Cuts `member` off from the other members, both ways; the test still reaches it.
    pub fn isolate(&self, member: usize) {
        let others: Vec<String> = (0..self.members)
            .filter(|&other| other != member)
            .map(|other| self.address(other))
            .collect();
        self.drop_from(member, &others);
        for other in (0..self.members).filter(|&other| other != member) {
            self.drop_from(other, &[self.address(member)]);
        }
    }

    /// Lifts every cut.
    pub fn heal(&self) {
        for member in 0..self.members {
            let netns = self.netns(member);
            // A member without a cut has no table to delete.
            let _ = run(
                "ip",
                &["netns", "exec", &netns, "nft", "delete table inet cut"],
            );
        }
    }

    /// Drops every packet `member` receives from `sources`.
    fn drop_from(&self, member: usize, sources: &[String]) {
        let script = format!(
            "add table inet cut; \
             add chain inet cut input {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet cut input ip saddr {{ {} }} drop",
            sources.join(", ")
        );
        let netns = self.netns(member);
        run("ip", &["netns", "exec", &netns, "nft", &script])
            .unwrap_or_else(|failure| panic!("the cut of member {member}: {failure}"));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for member in 0..self.members {
            let _ = run("ip", &["netns", "del", &self.netns(member)]);
        }
        // The leg's far end is in the hub: deleting the hub deletes the leg.
        let _ = run("ip", &["netns", "del", &self.hub()]);
    }
}
