//! What a shard-per-core process needs from the system and from its panics: io_uring and
//! locked memory checked before any executor starts (so a refusal names its cause and fix),
//! the memlock limit raised toward what the rings register, the CPUs to pin shards to, and
//! the panic policy.

use crate::Error;

/// Makes any panic, on a shard or any other thread, log what happened and abort the process.
///
/// A shard owns its logs outright: when its thread dies, its partitions have no owner, and
/// a process that kept running would accept connections it can never answer. As Kafka
/// (`Exit.halt`) and Redpanda (`vassert` aborts) do, the process stops instead and its
/// supervisor (systemd, Kubernetes) starts it again; recovery then runs as after a crash.
/// The `coremq` binary calls this first thing. An embedding program decides for itself:
/// without it, a panicking shard's thread ends and calls for its logs fail with
/// `ShuttingDown`.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        log::error!(
            "thread {} panicked ({info}): aborting the process so that a supervisor restarts \
             it (recovery runs as after a crash)",
            thread.name().unwrap_or("unnamed")
        );
        std::process::abort();
    }));
}

/// Raises the soft memlock limit toward what the shards register with io_uring, as far
/// as the hard limit allows. glommio falls back to unregistered buffers beyond it.
pub(crate) fn raise_memlock(needed: u64) {
    let Ok((soft, hard)) = rlimit::Resource::MEMLOCK.get() else {
        return;
    };
    let wanted = (needed + (8 << 20)).min(hard);
    if soft < wanted {
        let _ = rlimit::Resource::MEMLOCK.set(wanted, hard);
    }
}

/// Locked memory the shards' io_uring rings need before any buffer is registered: below
/// it glommio cannot start an executor (measured with glommio 0.12 on Linux 6.18: 384 KiB
/// fails, 512 KiB starts any number of shards).
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// Checks that the system gives the shards io_uring and enough locked memory, so a refusal
/// reads as its cause and fix rather than as a failed executor.
pub(crate) fn preflight() -> Result<(), Error> {
    if let Err(error) = io_uring::IoUring::new(4) {
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|text| text.trim().to_string())
            .unwrap_or_default();
        let cause = if disabled == "1" || disabled == "2" {
            format!(
                "kernel.io_uring_disabled is {disabled}: set it to 0 (sysctl -w kernel.io_uring_disabled=0)"
            )
        } else {
            "in a container, the default seccomp profile (Docker, containerd, Kubernetes \
             RuntimeDefault) blocks io_uring_setup: run with a profile that allows the \
             io_uring_* system calls (the container runtimes' default with them added: \
             deploy/seccomp/coremq.json, docker run --security-opt \
             seccomp=deploy/seccomp/coremq.json; or seccomp=unconfined); Linux 5.8 or \
             later is required"
                .to_string()
        };
        return Err(Error::System {
            reason: format!("io_uring is unavailable ({error}); {cause}"),
        });
    }
    if let Ok((soft, _)) = rlimit::Resource::MEMLOCK.get()
        && soft < MEMLOCK_MIN_BYTES
    {
        return Err(Error::System {
            reason: format!(
                "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; io_uring needs at least {} KiB. \
                 Raise it: ulimit -l unlimited, LimitMEMLOCK=infinity in a systemd unit, or \
                 docker run --ulimit memlock=-1",
                soft >> 10,
                MEMLOCK_MIN_BYTES >> 10
            ),
        });
    }
    Ok(())
}

pub(crate) fn online_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = match glommio::CpuSet::online() {
        Ok(set) => set.into_iter().map(|location| location.cpu).collect(),
        Err(_) => Vec::new(),
    };
    cpus.sort_unstable();
    cpus
}
