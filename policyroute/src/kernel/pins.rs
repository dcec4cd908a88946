//! Pins of the dataplane in bpffs, for operators who look with bpftool. Nothing is read
//! back from them except by [`Dataplane::load_sharing`](crate::kernel::dataplane::Dataplane::load_sharing)
//! right after this process pinned them.
use std::path::Path;

use crate::kernel::{dataplane::Dataplane, mounts, KernelError};

/// Pins the maps (and the programs this process loaded) in `dir`, replacing older pins;
/// mounts bpffs when it is missing.
pub fn pin(dp: &mut Dataplane, dir: &Path) -> Result<(), KernelError> {
    mounts::ensure_bpffs(dir).map_err(KernelError::io(format!("bpffs at {}", dir.display())))?;
    Ok(dp.pin(dir)?)
}

/// Removes the pin directory; `false` when there was none.
pub fn unpin(dir: &Path) -> Result<bool, KernelError> {
    if !dir.exists() {
        return Ok(false);
    }
    let reading = || KernelError::io("reading the pin directory");
    for entry in std::fs::read_dir(dir).map_err(reading())? {
        let path = entry.map_err(reading())?.path();
        std::fs::remove_file(&path)
            .map_err(KernelError::io(format!("unpinning {}", path.display())))?;
    }
    std::fs::remove_dir(dir).map_err(KernelError::io("removing the pin directory"))?;
    Ok(true)
}
