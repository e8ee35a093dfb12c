//! The TOML config loader on arbitrary text: a `Config` or a typed error,
//! never a panic; a config it accepts validates.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = convoy::Config::from_toml_str(text) {
        // What the loader accepts, the builder's own check accepts too.
        assert!(config.validate().is_ok(), "loaded but invalid: {text:?}");
    }
});
