//! Writes the seed corpus: `cargo run --example seeds` in `fuzz/` fills
//! `corpus/<target>/<name>` (the files are committed; rerun after changing
//! an input type, since the encoding follows the types).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in ferrite_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), &bytes)?;
        println!("{target}/{name}: {} bytes", bytes.len());
    }
    Ok(())
}
