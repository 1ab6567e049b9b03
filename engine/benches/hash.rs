//! Hash throughput on a large file: cold (read and hash every byte) and warm
//! (the stat cache answers). `cargo bench -p pipe-engine --bench hash [-- SIZE_MB]`.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

use std::io::Write;
use std::time::Instant;

use pipe_engine::hash::{StatCache, hash_file};

fn main() {
    let mb: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("big.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mb {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7) as u8;
            }
            file.write_all(&block).expect("write");
        }
    }
    // Old enough for the stat cache to trust it.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    let bytes = (mb << 20) as f64;
    let start = Instant::now();
    let digest = hash_file(&path).expect("hash");
    let cold = start.elapsed().as_secs_f64();
    let cache = StatCache::default();
    cache.hash_file(&path).expect("hash");
    let start = Instant::now();
    let again = cache.hash_file(&path).expect("hash");
    let warm = start.elapsed().as_secs_f64();
    assert_eq!(digest, again);
    println!("file: {mb} MiB (page cache warm after writing)");
    println!(
        "hash, no stat cache: {:.3} s = {:.2} GB/s",
        cold,
        bytes / cold / 1e9
    );
    println!("hash, stat cache hit: {:.6} s", warm);
}
