//! A small tmpfs for disk-full and read-only faults (shared by the storage and the end-to-end
//! fault suites). Mounting needs root: the cases that use it run when `HERALD_TEST_FAULTS=1`
//! and are skipped otherwise.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(size: &str, under: &str) -> Option<SmallDisk> {
        if std::env::var("HERALD_TEST_FAULTS").as_deref() != Ok("1") {
            eprintln!("skipped: set HERALD_TEST_FAULTS=1 (as root) to run the disk fault cases");
            return None;
        }
        let dir =
            PathBuf::from(under).join(format!("herald-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed (HERALD_TEST_FAULTS needs root)"
        );
        Some(SmallDisk { dir })
    }

    /// Fills the disk with a file, leaving about `leave` bytes free.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let path = self.dir.join("filler");
        let free = free_bytes(&self.dir);
        let size = free.saturating_sub(leave);
        // The stores under test keep writing while this runs, so the disk may fill before
        // the filler does: that is the point, and not an error here.
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            match file.write_all(&chunk[..n]) {
                Ok(()) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}
