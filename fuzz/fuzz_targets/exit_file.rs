//! An exit status file as the agent finds it after a restart: any bytes at all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tend_proto::ExitStatus;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = ExitStatus::from_json(data) {
        // What was accepted writes back to a file that reads the same.
        let again = ExitStatus::from_json(&s.to_json()).expect("own output re-reads");
        assert_eq!(again, s);
        let _ = s.shell_code();
    }
});
