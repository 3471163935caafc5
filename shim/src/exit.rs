//! A process exit as the shim reports it to containerd, shared by the server
//! (which reaps its children) and the `delete` action (which reports a
//! runner it killed after the server died).

use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// The exit status containerd is told for a process killed by SIGKILL.
pub const KILLED: u32 = 128 + 9;

/// A process exit as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: u32,
    /// When the shim learned of it.
    pub at: SystemTime,
}

impl Exit {
    /// An exit with `code`, now.
    pub fn now(code: u32) -> Exit {
        Exit {
            code,
            at: SystemTime::now(),
        }
    }

    /// Its time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123));
        // before the epoch (a clock set back): zero, not a panic
        let ts = timestamp(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!((ts.seconds, ts.nanos), (0, 0));
    }
}
