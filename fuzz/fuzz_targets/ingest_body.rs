//! Any bytes as an ingest body, in both formats: parsing and validation must
//! answer Ok or an `ApiError` (never panic), and an accepted event must
//! encode to valid JSON that parses back to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::config::{Config, LiveConfig};
use sidewire::event::Event;
use sidewire::http::ingest::{parse_body, BodyFormat};

fuzz_target!(|data: &[u8]| {
    let live = LiveConfig::new(Config::default());
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        if let Ok(events) = parse_body(data, format, 1000, &live.rules) {
            for (i, e) in events.iter().enumerate() {
                let stored = Event::from_new(i as u64 + 1, e);
                let back = Event::from_json(&stored.json).expect("encoded events parse back");
                assert_eq!(back, stored);
            }
        }
    }
});
