//! The setuid policy parser: any text either parses or gives one
//! `FILE:LINE: ...` line; a parsed policy never lets root in, and writes back
//! to a file that parses to the same policy.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tend_policy::{Policy, PolicyError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/tend/spawn-policy.hcl");
    match Policy::parse(path, text) {
        Ok(p) => {
            for u in &p.task_users {
                assert!(u != "root" && u.trim_start_matches('0') != "", "root in task_users: {u:?}");
            }
            let again = Policy::parse(path, &p.to_string()).expect("a written policy parses");
            assert_eq!(again, p);
        }
        Err(PolicyError::Syntax { line, message, .. }) => {
            assert!(line >= 1 && line <= text.lines().count().max(1));
            assert!(!message.contains('\n'), "{message:?}");
        }
        Err(e) => panic!("parse gave a non-syntax error: {e}"),
    }
});
