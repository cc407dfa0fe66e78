//! Entry points for the cargo-fuzz targets in `fuzz/`. Compiled only with `--cfg fuzzing`.
