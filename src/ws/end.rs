//! Why a dashboard connection ended: [`End`], the one close frame each end
//! sends and the `reason` it is counted under. The connection task decides
//! it; the outbox (closing) and the replay (its failures) use it.

use crate::metrics::DisconnectReason;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Why a connection ended (the `reason` label of disconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    ClientClose,
    SlowConsumer,
    HeartbeatTimeout,
    Shutdown,
    /// The store could not answer a resume.
    ReplayFailed,
    /// A client frame over [`MAX_CLIENT_MESSAGE`](super::socket::MAX_CLIENT_MESSAGE).
    TooBig,
    /// The socket failed (reset, broken pipe): no close frame can go out.
    Broken,
}

impl End {
    /// The close frame the server sends for this end, if any. `ClientClose`
    /// gets a normal one: it is what flushes tungstenite's reply.
    pub(super) fn close_frame(self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::SlowConsumer => Some((CloseCode::Policy, "slow consumer")),
            End::HeartbeatTimeout => Some((CloseCode::Policy, "heartbeat timeout")),
            End::Shutdown => Some((CloseCode::Away, "server shutting down")),
            End::ClientClose => Some((CloseCode::Normal, "")),
            End::ReplayFailed => Some((CloseCode::Error, "replay failed")),
            End::TooBig => Some((CloseCode::Size, "message too big")),
            End::Broken => None,
        }
    }

    /// The `reason` of `sidewire_ws_disconnects_total`.
    pub(super) fn reason(self) -> DisconnectReason {
        match self {
            End::ClientClose => DisconnectReason::ClientClose,
            End::SlowConsumer => DisconnectReason::SlowConsumer,
            End::HeartbeatTimeout => DisconnectReason::HeartbeatTimeout,
            End::ReplayFailed | End::TooBig | End::Broken => DisconnectReason::Error,
            End::Shutdown => DisconnectReason::Shutdown,
        }
    }
}
