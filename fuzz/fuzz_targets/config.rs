//! Arbitrary text into the config loader: it returns a config or errors that name a key, never
//! panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match warmgate::config::load_str("fuzz.toml", text) {
        Ok(cfg) => {
            let _ = warmgate::config::summary(&cfg);
        }
        Err(errs) => assert!(!errs.is_empty()),
    }
});
