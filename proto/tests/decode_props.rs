//! Properties of decoding: whatever a peer sends, a reader returns an error and
//! never panics, never allocates what a header merely announces; and what we
//! encode decodes to itself.

use std::io::{self, Read};

use proptest::prelude::*;
use tend_proto::exit::EXIT_STATUS_VERSION;
use tend_proto::frame::{
    self, decode_body, FrameDecoder, FrameError, HEADER_LEN, MAGIC, MAX_FRAME_LEN,
    MIN_PROTOCOL_VERSION,
};
use tend_proto::{
    ExitStatus, ExitStatusV1, Hello, Request, Response, SpawnConfig, StartReport, Token,
    PROTOCOL_VERSION,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are minimised and reported; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decode `body` as every message type; errors are fine, panics are not.
fn decode_as_everything(body: &[u8]) {
    let _ = decode_body::<Hello>(body);
    let _ = decode_body::<Request>(body);
    let _ = decode_body::<Response>(body);
    let _ = decode_body::<StartReport>(body);
    let _ = decode_body::<SpawnConfig>(body);
    let _ = decode_body::<ExitStatus>(body);
    let _ = decode_body::<ExitStatusV1>(body);
}

/// Push `bytes` into a decoder in chunks of the given sizes (cycled), taking every
/// frame that completes and decoding it as every type. Stops at the first error,
/// as a connection would close there.
fn feed(bytes: &[u8], chunks: &[usize]) -> Result<usize, FrameError> {
    let mut dec = FrameDecoder::new();
    let mut frames = 0;
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        dec.push(chunk);
        while let Some(f) = dec.next_frame()? {
            decode_as_everything(&f.body);
            frames += 1;
        }
    }
    Ok(frames)
}

/// A header a reader accepts, followed by `body`.
fn framed(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Input for the decoder: raw noise, or frames with good headers and noisy bodies
/// (so the body decoders see more than what a bad magic lets through), or a mix.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        prop::collection::vec(body.clone(), 1..4).prop_map(|bodies| {
            bodies
                .iter()
                .flat_map(|b| framed(PROTOCOL_VERSION, b))
                .collect()
        }),
        (body, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(b, noise)| {
            let mut out = framed(PROTOCOL_VERSION, &b);
            out.extend_from_slice(&noise);
            out
        }),
    ]
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..64, 1..8)
}

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; 32]>().prop_map(Token)
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), token()).prop_map(|(version, token)| Hello { version, token })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        Just(Request::Wait),
        any::<i32>().prop_map(Request::Signal),
        (any::<i32>(), any::<u64>())
            .prop_map(|(signal, grace_ms)| Request::Stop { signal, grace_ms }),
        Just(Request::Stats),
        Just(Request::Release),
        Just(Request::StatsV2),
    ]
}

/// Any exit status, valid or not.
fn exit_status() -> impl Strategy<Value = ExitStatus> {
    let s = || any::<String>();
    (
        (
            // Mostly the version in force, so the valid path is well travelled.
            prop_oneof![3 => Just(EXIT_STATUS_VERSION), 1 => any::<u32>()],
            s(),
            s(),
            any::<u32>(),
        ),
        (
            any::<Option<i32>>(),
            any::<Option<i32>>(),
            any::<Option<i32>>(),
            any::<Option<i32>>(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            proptest::option::of(s()),
            s(),
            proptest::option::of(s()),
        ),
    )
        .prop_map(
            |(
                (version, alloc_id, task, run),
                (pid, wait_status, exit_code, signal),
                (core_dumped, oom_killed, oom_kills, started_at, finished_at, error),
            )| ExitStatus {
                version,
                alloc_id,
                task,
                run,
                pid,
                wait_status,
                exit_code,
                signal,
                core_dumped,
                oom_killed,
                oom_kills,
                started_at,
                finished_at,
                error,
            },
        )
}

fn is_valid_exit(s: &ExitStatus) -> bool {
    (1..=EXIT_STATUS_VERSION).contains(&s.version) && !(s.exit_code.is_some() && s.signal.is_some())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoder_never_panics(bytes in stream(), chunks in chunks()) {
        let _ = feed(&bytes, &chunks);
    }

    #[test]
    fn bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_as_everything(&body);
    }

    #[test]
    fn blocking_reader_never_panics(bytes in stream()) {
        let mut r = &bytes[..];
        while let Ok(f) = frame::read_frame(&mut r, MAX_FRAME_LEN) {
            decode_as_everything(&f.body);
        }
    }

    #[test]
    fn exit_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = ExitStatus::from_json(&bytes);
    }

    #[test]
    fn exit_json_text_never_panics(text in r#"[{}\[\]":,0-9a-z_ \n-]{0,200}"#) {
        // JSON-ish text gets further into the parser than uniform bytes do.
        let _ = ExitStatus::from_json(text.as_bytes());
    }

    #[test]
    fn requests_round_trip(reqs in prop::collection::vec(request(), 1..6), chunks in chunks()) {
        let bytes: Vec<u8> = reqs
            .iter()
            .flat_map(|r| frame::encode(r).expect("encode request"))
            .collect();
        // However the stream is cut, the same requests come out, in order.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            dec.push(chunk);
            while let Some(f) = dec.next_frame().expect("own frames decode") {
                prop_assert_eq!(f.version, PROTOCOL_VERSION);
                got.push(f.decode::<Request>().expect("own request decodes"));
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn hello_round_trips(h in hello()) {
        let bytes = frame::encode(&h).expect("encode hello");
        let f = frame::read_frame(&mut &bytes[..], MAX_FRAME_LEN).expect("read hello");
        let back: Hello = f.decode().expect("decode hello");
        prop_assert_eq!(back, h);
        prop_assert!(back.token.ct_eq(&h.token));
    }

    #[test]
    fn exit_status_round_trips_through_json(s in exit_status()) {
        match ExitStatus::from_json(&s.to_json()) {
            Ok(back) => {
                prop_assert!(is_valid_exit(&s), "accepted an invalid status: {:?}", s);
                prop_assert_eq!(back, s);
            }
            Err(e) => prop_assert!(!is_valid_exit(&s), "refused a valid status: {}: {:?}", e, s),
        }
    }

    #[test]
    fn exit_status_round_trips_through_frames(s in exit_status()) {
        let bytes = frame::encode(&Response::exited(&s)).expect("encode");
        let f = frame::read_frame(&mut &bytes[..], MAX_FRAME_LEN).expect("read");
        prop_assert_eq!(f.decode::<Response>().expect("decode").into_exit(), Ok(s.clone()));
        // The event of a daemon before the count: the same exit, 0 kills.
        let bytes = frame::encode(&Response::Exited((&s).into())).expect("encode");
        let f = frame::read_frame(&mut &bytes[..], MAX_FRAME_LEN).expect("read");
        let old = f.decode::<Response>().expect("decode").into_exit();
        prop_assert_eq!(old, Ok(ExitStatus { oom_kills: 0, ..s }));
    }

    #[test]
    fn over_limit_is_refused_from_the_header(
        len in (MAX_FRAME_LEN + 1)..=u32::MAX,
        version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
    ) {
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&version.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());

        // The incremental decoder refuses as soon as the header is in, holding
        // nothing beyond it.
        let mut dec = FrameDecoder::new();
        dec.push(&head);
        let err = dec.next_frame();
        prop_assert!(
            matches!(err, Err(FrameError::TooLong { len: l, max: MAX_FRAME_LEN }) if l == len),
            "{:?}", err
        );
        prop_assert_eq!(dec.buffered(), HEADER_LEN);

        // The blocking reader refuses without a single read past the header: a
        // reader that panics on the next read proves the body (and a buffer for
        // it) was never asked for.
        let mut r = HeaderThenPanic { head: &head };
        let err = frame::read_frame(&mut r, MAX_FRAME_LEN);
        prop_assert!(matches!(err, Err(FrameError::TooLong { .. })), "{:?}", err);
    }
}

/// Yields a header, then panics if read again.
struct HeaderThenPanic<'a> {
    head: &'a [u8],
}

impl Read for HeaderThenPanic<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(
            !self.head.is_empty(),
            "read past the header of an over-limit frame"
        );
        let n = buf.len().min(self.head.len());
        buf[..n].copy_from_slice(&self.head[..n]);
        self.head = &self.head[n..];
        Ok(n)
    }
}

#[test]
fn encoder_refuses_a_body_over_the_limit() {
    let big = vec![0u8; usize::try_from(MAX_FRAME_LEN).expect("fits") + 1];
    assert!(matches!(
        frame::encode(&big),
        Err(FrameError::TooLong { .. })
    ));
}

#[test]
fn a_body_at_the_limit_is_taken() {
    // A Vec<u8> of n bytes encodes as a varint length then the bytes.
    let n = usize::try_from(MAX_FRAME_LEN).expect("fits") - 3;
    let bytes = frame::encode(&vec![7u8; n]).expect("at the limit");
    assert_eq!(
        bytes.len() - HEADER_LEN,
        usize::try_from(MAX_FRAME_LEN).expect("fits")
    );
    let mut dec = FrameDecoder::new();
    dec.push(&bytes);
    let f = dec.next_frame().expect("taken").expect("whole");
    assert_eq!(f.decode::<Vec<u8>>().expect("decode").len(), n);
}
