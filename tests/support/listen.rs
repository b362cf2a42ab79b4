//! Where a started `herald` listens: every role binds `HERALD_LISTEN` and prints the address it
//! bound on stdout, so a test starts it on `127.0.0.1:0` and reads the port the kernel gave it.
//! A port picked by the test and handed over would leave a window in which another test's
//! process could take it, and the test would then talk to that process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// The base URL (`http://127.0.0.1:<port>`) `child` announces, started with a piped stdout;
/// `None` if it exits or says nothing within `within`. Keeps reading stdout to its end on a
/// thread of its own, so the pipe never fills up.
pub fn announced_base(child: &mut Child, within: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, url)) = line.split_once(" is listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    rx.recv_timeout(within).ok()
}
