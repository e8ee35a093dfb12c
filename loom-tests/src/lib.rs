//! Empty outside `--cfg loom`; the models live in `tests/`.
