//! Any text as a config file: loading must give a config or a list of
//! issues, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, &[]);
    }
});
