//! The upgraded socket a dashboard connection runs on, and its buffer
//! sizes, chosen for many mostly idle connections: tungstenite's 128 KiB
//! default read buffer per connection would dominate memory at 10,000 idle
//! dashboards. The read buffer is 256 bytes: what clients send (ping,
//! subscribe, resume) fits, a bigger frame grows it as it arrives, and
//! tungstenite zeroes the buffer's spare room before every read attempt,
//! which the connection makes each time it wakes, also for a broadcast.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Largest client frame or message; bigger ones close the connection with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// A dashboard connection's socket, after the 101.
pub(super) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Buffer sizes chosen for many mostly idle connections.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}
