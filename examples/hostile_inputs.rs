//! Writes the hostile `.opt` sources of `tests/common/hostile.rs` into a directory, one file
//! per case, for measuring `optjit check` on them:
//!
//! ```text
//! cargo run --release --example hostile_inputs -- /tmp/hostile
//! for f in /tmp/hostile/*.opt; do /usr/bin/time -f "%e s %M KB $f" target/release/optjit check "$f" >/dev/null; done
//! ```

#[path = "../tests/common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "hostile".into());
    std::fs::create_dir_all(&dir)?;
    for case in hostile::cases() {
        let path = dir.join(format!("{}.opt", case.name));
        std::fs::write(&path, &case.source)?;
        println!(
            "{} ({} bytes): {:?}",
            path.display(),
            case.source.len(),
            case.expect
        );
    }
    Ok(())
}
