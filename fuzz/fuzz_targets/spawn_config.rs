//! The spawn config as tend-spawn reads it from stdin (possibly setuid): a frame
//! body decoded, then validated. Neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tend_proto::frame::{decode_body, FrameDecoder};
use tend_proto::SpawnConfig;

fn check(body: &[u8]) {
    if let Ok(c) = decode_body::<SpawnConfig>(body) {
        if c.validate().is_ok() {
            let _ = (c.task_root(), c.exit_status_path(), c.log_dir());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Seeds are whole frames (the golden fixtures); take the body when there is
    // one, and try the raw bytes as a body too.
    let mut dec = FrameDecoder::new();
    dec.push(data);
    if let Ok(Some(f)) = dec.next_frame() {
        check(&f.body);
    }
    check(data);
});
