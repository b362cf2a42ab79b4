//! The Prometheus recorder's histogram samples are folded into buckets by the upkeep thread,
//! not held until a scrape. Measured with a counting allocator (this test binary's own), so
//! the bytes held are the recorder's and nothing else's.

use metrics::{Key, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SAMPLES: usize = 1_000_000;

/// Bytes still allocated after `SAMPLES` latencies recorded in rounds, with no scrape.
fn held_after_recording(upkeep: Option<Duration>) -> isize {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .expect("static buckets")
        .build_recorder();
    if let Some(every) = upkeep {
        herald_http::spawn_metrics_upkeep(recorder.handle(), every);
    }
    let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
    let histogram = recorder.register_histogram(&Key::from_name("latency_seconds"), &metadata);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for _ in 0..100 {
        for _ in 0..SAMPLES / 100 {
            histogram.record(0.002);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    // One more sample after the last upkeep, so memory freed lazily meanwhile is collected.
    histogram.record(0.002);
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    drop(histogram);
    drop(recorder);
    held
}

#[test]
fn histogram_samples_nobody_scrapes_are_folded_into_buckets_not_kept() {
    let kept = held_after_recording(None);
    let folded = held_after_recording(Some(Duration::from_millis(10)));
    // Without the upkeep every sample stays (16 bytes each): the measurement can tell.
    assert!(
        kept >= (SAMPLES * 16) as isize,
        "without upkeep {kept} bytes were held for {SAMPLES} samples"
    );
    assert!(
        folded < (SAMPLES * 16 / 10) as isize,
        "with upkeep {folded} bytes were still held for {SAMPLES} samples"
    );
}
