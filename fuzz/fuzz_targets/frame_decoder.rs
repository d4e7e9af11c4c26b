//! Whatever arrives on a daemon socket or a tend-spawn pipe: the incremental
//! decoder, fed in chunks, and every message type on every frame it yields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tend_proto::frame::{self, decode_body, FrameDecoder, MAX_FRAME_LEN};
use tend_proto::{ExitStatus, Hello, Request, Response, SpawnConfig, StartReport};

fn decode_as_everything(body: &[u8]) {
    let _ = decode_body::<Hello>(body);
    let _ = decode_body::<Request>(body);
    let _ = decode_body::<Response>(body);
    let _ = decode_body::<StartReport>(body);
    let _ = decode_body::<SpawnConfig>(body);
    let _ = decode_body::<ExitStatus>(body);
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size, so frames are cut at every place.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 32) + 1;
    let mut dec = FrameDecoder::new();
    'stream: for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => decode_as_everything(&f.body),
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }

    // The blocking reader on the same bytes, and the bytes as a bare body.
    let mut r = stream;
    while let Ok(f) = frame::read_frame(&mut r, MAX_FRAME_LEN) {
        decode_as_everything(&f.body);
    }
    decode_as_everything(stream);
});
