//! Keeping a listener's port to one process. Every shard's listener sets SO_REUSEPORT so the
//! shards of this process share the port, but the kernel lets any process of the same user
//! join such a group: a second broker on the same port would silently take part of the
//! connections. So before binding, a plain socket (no SO_REUSEPORT) is bound to the address
//! and dropped: it fails with "address in use" whenever anyone listens there (or while
//! connections of an earlier process linger on the port, in which case the listeners are
//! counted, below, to tell the two apart). After every
//! shard has bound, the listening sockets on the address are counted (`/proc/net/tcp` or
//! `tcp6`): more than this process opened means another process bound at the same moment,
//! and this one refuses to serve.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

/// A listener that cannot be opened, or whose address another process holds.
#[derive(Debug, Clone)]
pub struct ListenError {
    /// Who the listener is for ("Kafka clients").
    pub what: String,
    pub address: SocketAddr,
    pub reason: String,
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen for {} on {}: {}",
            self.what, self.address, self.reason
        )
    }
}

impl std::error::Error for ListenError {}

/// Fails when some process already listens on `address` (port 0 always has room). The
/// plain bind also fails while connections a previous process accepted on the port linger
/// (FIN_WAIT, TIME_WAIT); then the listening sockets are counted instead.
pub(crate) fn probe(address: SocketAddr, what: &str) -> Result<(), ListenError> {
    if address.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(address) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == ErrorKind::AddrInUse => verify(address, 0, what),
        Err(error) => Err(ListenError {
            what: what.into(),
            address,
            reason: error.to_string(),
        }),
    }
}

/// Fails when more sockets listen on `address` than the `ours` this process opened.
pub(crate) fn verify(address: SocketAddr, ours: usize, what: &str) -> Result<(), ListenError> {
    let table = if address.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        // Without /proc the plain bind before the shards' is the only check.
        return Ok(());
    };
    let listening = count_listening(&text, address);
    if listening > ours {
        return Err(in_use(address, what));
    }
    Ok(())
}

fn in_use(address: SocketAddr, what: &str) -> ListenError {
    ListenError {
        what: what.into(),
        address,
        reason: "address in use (another process listens there; stop it or choose another \
                 address)"
            .into(),
    }
}

/// Sockets in state LISTEN bound exactly to `address` in a `/proc/net/tcp{,6}` table.
fn count_listening(table: &str, address: SocketAddr) -> usize {
    let local = proc_address(address);
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local_address = fields.nth(1);
            let state = fields.nth(1);
            local_address == Some(local.as_str()) && state == Some("0A")
        })
        .count()
}

/// An address as `/proc/net/tcp{,6}` writes it: the IP as 32-bit words in host order (this
/// is Linux on little-endian machines), each in hex, then the port in hex.
fn proc_address(address: SocketAddr) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|word| {
                format!(
                    "{:08X}",
                    u32::from_ne_bytes(word.try_into().expect("4 bytes"))
                )
            })
            .collect(),
    };
    format!("{ip}:{:04X}", address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_listeners_of_an_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(count_listening(&table, address), 1);
        assert!(verify(address, 1, "Kafka clients").is_ok());
        assert!(verify(address, 0, "Kafka clients").is_err());
        let error = probe(address, "Kafka clients").unwrap_err();
        assert!(error.to_string().contains("address in use"), "{error}");
        drop(listener);
        assert!(probe(address, "Kafka clients").is_ok());
    }

    #[test]
    fn writes_addresses_as_proc_does() {
        let v4: SocketAddr = "127.0.0.1:9092".parse().unwrap();
        assert_eq!(proc_address(v4), "0100007F:2384");
        let v6: SocketAddr = "[::1]:9092".parse().unwrap();
        assert_eq!(proc_address(v6), "00000000000000000000000001000000:2384");
    }
}
