//! The library's folders are its pipeline, and each stage imports only
//! from the stages below it: the vocabulary (`sync`, `clock`, `priority`,
//! `request`, `outcome`), then `intake`, `config`, `plan`, then `observe`
//! and `device` side by side, then `runtime`, which ties them together.
//!
//! This test reads every source file of the library and fails, naming the
//! file and line, where a module names a stage above its own (a
//! `crate::stage` path). The crate root (`lib.rs`) re-exports from every
//! stage and is exempt.

use std::fs;
use std::path::{Path, PathBuf};

/// The stages and their rank: a file may name a stage of lower or equal
/// rank, never a higher one. `observe` and `device` share a rank but may
/// not name each other.
const STAGES: &[(&str, u32)] = &[
    ("sync", 0),
    ("clock", 0),
    ("priority", 1),
    ("request", 2),
    ("outcome", 2),
    ("intake", 3),
    ("config", 4),
    ("plan", 5),
    ("observe", 6),
    ("device", 6),
    ("runtime", 7),
];

fn rank(stage: &str) -> Option<u32> {
    STAGES.iter().find(|(s, _)| *s == stage).map(|&(_, r)| r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The stage a file belongs to: its first path component under `src/`,
/// without `.rs`.
fn stage_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a path under src/");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// Every `crate::name` in `line`, outside `//` comments.
fn named_stages(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn no_stage_imports_from_a_later_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let stage = stage_of(&src, file);
        if stage == "lib" {
            continue;
        }
        let own = rank(&stage).unwrap_or_else(|| {
            panic!(
                "{}: stage `{stage}` is not in this test's table; give it a rank",
                file.display()
            )
        });
        let text = fs::read_to_string(file).expect("a UTF-8 source file");
        for (n, line) in text.lines().enumerate() {
            for named in named_stages(line) {
                let Some(theirs) = rank(&named) else {
                    continue; // not a stage (a macro, a re-export at the root)
                };
                let sideways = theirs == own && named != stage && own == 6;
                if theirs > own || sideways {
                    wrong.push(format!(
                        "{}:{}: `{stage}` names `crate::{named}`",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a later stage:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_a_violation() {
    assert_eq!(named_stages("use crate::runtime::Shared;"), ["runtime"]);
    assert_eq!(
        named_stages("let x = crate::plan::dedup::x(); // crate::runtime"),
        ["plan"]
    );
    assert!(rank("runtime") > rank("config"));
    assert!(rank("config") > rank("intake"));
}
