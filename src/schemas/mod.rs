//! The schema types of the OpenAPI document: the documented shapes of
//! request and response bodies, query parameters and WebSocket messages.
//!
//! A leaf: it knows the error codes and nothing of the web layer. Most
//! handlers build their JSON by hand (the stats object is open-ended, events
//! are pre-encoded once), so these types are the documented shapes; the unit
//! tests in [`crate::api_docs`] compare them with what the real code
//! produces, so the two cannot drift apart silently.
//!
//! One file per part of the API: [`events`] (ingest bodies, the accepted
//! event), [`stats`] (the stats object, activity), [`errors`] (the error
//! body, health), [`ws`] (WebSocket messages); all re-exported here.

mod errors;
mod events;
mod stats;
mod ws;

pub use errors::*;
pub use events::*;
pub use stats::*;
pub use ws::*;
