//! Docs cannot lie: every `resound` command shown in `README.md` and `docs/*.md` parses with the
//! real command line, and every long flag of `serve`, `send` and `bench` is in a README table.
//!
//! What counts as a command, so that a writer knows what is checked:
//! * fenced code blocks are read (```` ``` ```` or `~~~`, indented or not), and the inline code
//!   of table rows (the Go -> resound tables); prose is not;
//! * in a block tagged `sh`, `bash`, `shell`, `console` or `zsh`, every line is a command line —
//!   unless some line of the block starts with `$ `: then the block shows a session, and only the
//!   `$ ` lines are commands (the others are their output);
//! * in any other block (untagged: output, diagrams, usage synopses like `resound serve [--echo
//!   ADDR]`) only `$ ` lines are commands;
//! * a line ending in `\` continues on the next; `#` starts a comment; `;`, `&&`, `||`, `|` and
//!   `&` separate commands; redirections (`> file`, `2>&1`) are dropped;
//! * a command is `resound ...` (also `target/release/resound ...`), after any `NAME=value`
//!   assignments and wrappers (`env`, `exec`, `nohup`, `time`, `sudo`, `taskset -c N`,
//!   `timeout N`); `cargo run [options] -- ARGS` counts as `resound ARGS` unless it names another
//!   target (`--example`, `--bin`, `-p`);
//! * a word with a shell expansion (`"$(pgrep -n resound)"`, `$PORT`) is a value the reader's
//!   shell computes; it is replaced by `1`, which every value parser of ours accepts.
//!
//! * in a table row, inline code is a command only if it gives the subcommand an argument
//!   (`` `resound serve --udp 7000` ``); `` `resound send` `` alone names the command, and is not
//!   checked.
//!
//! `--help` and `--version` count as parsing.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use resound::cli::Cli;

/// One command found in a document.
struct Found {
    /// `README.md:123`.
    place: String,
    /// The line as written (continuations joined).
    text: String,
    /// What the shell would run, as `resound` argv.
    argv: Vec<String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, then docs/*.md in name order.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .map(|dir| {
            dir.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    docs.insert(0, root().join("README.md"));
    docs
}

/// Every `resound` command in one markdown text.
fn commands_in(name: &str, text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut block: Option<(String, Vec<(usize, &str)>)> = None; // (tag, lines)
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence = trimmed.starts_with("```") || trimmed.starts_with("~~~");
        match (&mut block, fence) {
            (None, true) => block = Some((trimmed[3..].trim().to_lowercase(), Vec::new())),
            (Some(_), true) => {
                let (tag, lines) = block.take().unwrap();
                found.extend(commands_in_block(name, &tag, &lines));
            }
            (Some((_, lines)), false) => lines.push((i + 1, line)),
            (None, false) if trimmed.starts_with('|') => {
                found.extend(commands_in_table_row(&format!("{name}:{}", i + 1), line));
            }
            (None, false) => {}
        }
    }
    found
}

/// The commands in the inline code of one table row.
fn commands_in_table_row(place: &str, row: &str) -> Vec<Found> {
    // Between the 1st and 2nd backtick, the 3rd and 4th, ...
    let spans = row.split('`').skip(1).step_by(2);
    let mut found = Vec::new();
    for span in spans {
        for words in simple_commands(span) {
            match resound_argv(&words) {
                Some(argv) if argv.len() > 2 => found.push(Found {
                    place: place.to_string(),
                    text: span.to_string(),
                    argv,
                }),
                _ => {}
            }
        }
    }
    found
}

fn commands_in_block(name: &str, tag: &str, lines: &[(usize, &str)]) -> Vec<Found> {
    // Join continuations first: a `$ ` line may go on over several lines.
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut open = false;
    for &(number, line) in lines {
        let line = line.trim();
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (line, false),
        };
        if open {
            let last = &mut logical.last_mut().unwrap().1;
            last.push(' ');
            last.push_str(body.trim());
        } else {
            logical.push((number, body.trim().to_string()));
        }
        open = continues;
    }
    let session = logical.iter().any(|(_, l)| l.starts_with("$ "));
    let shell = matches!(tag, "sh" | "bash" | "shell" | "console" | "zsh");
    let mut found = Vec::new();
    for (number, line) in logical {
        let command = match line.strip_prefix("$ ") {
            Some(command) => command,
            None if shell && !session => &line,
            None => continue,
        };
        for words in simple_commands(command) {
            if let Some(argv) = resound_argv(&words) {
                found.push(Found {
                    place: format!("{name}:{number}"),
                    text: line.clone(),
                    argv,
                });
            }
        }
    }
    found
}

/// A word of a command line, and whether the shell would expand part of it.
#[derive(Clone, Debug, Default)]
struct Word {
    text: String,
    expanded: bool,
}

/// A token: a word, or an operator (`;`, `&`, `|`, `&&`, `||`, or a redirection `>`/`<`).
#[derive(Debug)]
enum Token {
    Word(Word),
    Separator,
    Redirect,
}

/// Split one command line the way a POSIX shell would, closely enough for documentation.
fn tokenize(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word: Option<Word> = None;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let end_word = |word: &mut Option<Word>, tokens: &mut Vec<Token>| {
        if let Some(w) = word.take() {
            tokens.push(Token::Word(w));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => end_word(&mut word, &mut tokens),
            '#' if word.is_none() => break, // a comment
            ';' | '&' | '|' => {
                end_word(&mut word, &mut tokens);
                if c == '&' && tokens.last().is_some_and(|t| matches!(t, Token::Redirect)) {
                    // `2>&1`: part of the redirection
                } else {
                    tokens.push(Token::Separator);
                }
                while i + 1 < chars.len() && chars[i + 1] == c {
                    i += 1; // `&&`, `||`, `;;`
                }
            }
            '>' | '<' => {
                // `2>` and `2>>`: the digits were the descriptor, not a word.
                if word
                    .as_ref()
                    .is_some_and(|w| w.text.chars().all(|d| d.is_ascii_digit()))
                {
                    word = None;
                }
                end_word(&mut word, &mut tokens);
                while i + 1 < chars.len() && matches!(chars[i + 1], '>' | '<') {
                    i += 1;
                }
                tokens.push(Token::Redirect);
            }
            '\'' => {
                let w = word.get_or_insert_with(Word::default);
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    w.text.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                let w = word.get_or_insert_with(Word::default);
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    w.expanded |= matches!(chars[i], '$' | '`');
                    w.text.push(chars[i]);
                    i += 1;
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(Word::default);
                if let Some(&next) = chars.get(i + 1) {
                    w.text.push(next);
                    i += 1;
                }
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                // `$(...)` as one word, spaces and all.
                let w = word.get_or_insert_with(Word::default);
                w.expanded = true;
                let mut depth = 0;
                while i < chars.len() {
                    w.text.push(chars[i]);
                    match chars[i] {
                        '(' => depth += 1,
                        ')' if depth == 1 => break,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                let w = word.get_or_insert_with(Word::default);
                w.expanded |= matches!(c, '$' | '`');
                w.text.push(c);
            }
        }
        i += 1;
    }
    end_word(&mut word, &mut tokens);
    tokens
}

/// The simple commands of a line: its words split at separators, redirections removed.
fn simple_commands(line: &str) -> Vec<Vec<Word>> {
    let mut commands = vec![Vec::new()];
    let mut redirect = false;
    for token in tokenize(line) {
        match token {
            Token::Separator => commands.push(Vec::new()),
            Token::Redirect => redirect = true,
            Token::Word(_) if redirect => redirect = false, // the redirection's target
            Token::Word(w) => commands.last_mut().unwrap().push(w),
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

/// If `words` run resound, the argv it gets.
fn resound_argv(words: &[Word]) -> Option<Vec<String>> {
    let is_assignment = |w: &Word| {
        w.text.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        })
    };
    let mut i = 0;
    loop {
        let word = words.get(i)?.text.as_str();
        match word {
            _ if is_assignment(&words[i]) => i += 1,
            "env" | "exec" | "nohup" | "time" | "sudo" | "command" | "do" | "then" | "else" => {
                i += 1
            }
            // `taskset -c LIST` or `taskset MASK`; `timeout DURATION`.
            "taskset" if words.get(i + 1).is_some_and(|w| w.text.starts_with('-')) => i += 3,
            "taskset" | "timeout" => i += 2,
            _ => break,
        }
    }
    let program = &words[i].text;
    let rest = &words[i + 1..];
    let args: &[Word] = if Path::new(program)
        .file_name()
        .is_some_and(|n| n == "resound")
    {
        rest
    } else if program == "cargo" && rest.first().is_some_and(|w| w.text == "run") {
        let split = rest.iter().position(|w| w.text == "--");
        let options = &rest[1..split.unwrap_or(rest.len())];
        let other_target = options.windows(2).any(|pair| {
            matches!(pair[0].text.as_str(), "--bin" | "-p" | "--package")
                && pair[1].text != "resound"
        }) || options
            .iter()
            .any(|w| w.text == "--example" || w.text.starts_with("--example="));
        if other_target {
            return None;
        }
        split.map_or(&[][..], |s| &rest[s + 1..])
    } else {
        return None;
    };
    let mut argv = vec!["resound".to_string()];
    argv.extend(args.iter().map(|w| {
        if w.expanded {
            "1".to_string()
        } else {
            w.text.clone()
        }
    }));
    Some(argv)
}

/// Every command in every document.
fn all_commands() -> Vec<Found> {
    let mut found = Vec::new();
    for path in documents() {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        found.extend(commands_in(&name, &text));
    }
    found
}

/// Every `resound` command line in README.md and docs/*.md parses with the real CLI.
#[test]
fn every_documented_command_parses() {
    let found = all_commands();
    let mut failures = Vec::new();
    for f in &found {
        if let Err(e) = Cli::try_parse_from(&f.argv) {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                continue;
            }
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            failures.push(format!("{}: `{}`\n    {first}", f.place, f.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} documented commands do not parse:\n{}",
        failures.len(),
        found.len(),
        failures.join("\n")
    );
    // Not vacuous: the docs show each subcommand at least once.
    for sub in ["serve", "send", "bench"] {
        assert!(
            found
                .iter()
                .any(|f| f.argv.get(1).is_some_and(|a| a == sub)),
            "no `resound {sub}` command found in a code block of README.md or docs/*.md \
             (found: {:?})",
            found.iter().map(|f| &f.place).collect::<Vec<_>>()
        );
    }
}

/// Every long flag of `serve` and `send` (as `--help` lists them) appears in a table row of
/// README.md, and every long flag of `bench` in a table row of docs/bench.md — the flag tables a
/// reader looks things up in.
#[test]
fn every_long_flag_is_in_a_flag_table() {
    let mut missing = Vec::new();
    let cli = Cli::command();
    for (sub, doc) in [
        ("serve", "README.md"),
        ("send", "README.md"),
        ("bench", "docs/bench.md"),
    ] {
        let text = fs::read_to_string(root().join(doc)).unwrap();
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with('|'))
            .collect();
        let command = cli.find_subcommand(sub).expect("subcommand");
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || matches!(long, "help" | "version") {
                continue;
            }
            let flag = format!("--{long}");
            if rows.iter().any(|row| mentions(row, &flag)) {
                continue;
            }
            let elsewhere: Vec<String> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| mentions(l, &flag))
                .map(|(n, _)| format!("{doc}:{}", n + 1))
                .collect();
            missing.push(if elsewhere.is_empty() {
                format!("{sub} {flag}: nowhere in {doc}")
            } else {
                format!(
                    "{sub} {flag}: in no table row of {doc} (mentioned at {})",
                    elsewhere.join(", ")
                )
            });
        }
    }
    assert!(
        missing.is_empty(),
        "{} flag(s) missing from the flag tables:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

/// Does `text` mention `flag` as a whole flag (`--max` is not in `--max-line`)?
fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        let after = text[at + flag.len()..].chars().next();
        let before = text[..at].chars().next_back();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

// ---------------------------------------------------------------- the extractor itself

/// The extraction rules above, on a document written to exercise them: a checker that found
/// nothing would pass every README.
#[test]
fn extractor_follows_its_rules() {
    let doc = "\
text `resound serve --bogus` in prose is not read

```sh
cargo run --release -- serve --echo 127.0.0.1:0     # a comment
RUST_LOG=debug taskset -c 0 target/release/resound serve \\
    --udp 127.0.0.1:0 > log.txt 2>&1 &
resound bench connect -t :7000 --pid \"$(pgrep -n resound)\"; resound send f --to :7002
cargo run --example 01_echo -- 7000
for i in 1 2; do resound serve --echo $PORT; done
```

```
resound serve [--echo ADDR]
resound bench echo -> 127.0.0.1:1  connections=100
$ resound send notes.txt
```

```console
$ resound serve --files :0
listening files tcp 0.0.0.0:40000
```

| Go | resound |
| --- | --- |
| `net.Listen` | `resound serve --echo 7000` or `cargo run -- serve --udp :7000`, not `resound send` |
";
    let found: Vec<String> = commands_in("doc.md", doc)
        .iter()
        .map(|f| format!("{} {}", f.place, f.argv.join(" ")))
        .collect();
    assert_eq!(
        found,
        [
            "doc.md:4 resound serve --echo 127.0.0.1:0",
            "doc.md:5 resound serve --udp 127.0.0.1:0",
            "doc.md:7 resound bench connect -t :7000 --pid 1",
            "doc.md:7 resound send f --to :7002",
            "doc.md:9 resound serve --echo 1",
            "doc.md:15 resound send notes.txt",
            "doc.md:19 resound serve --files :0",
            "doc.md:25 resound serve --echo 7000",
            "doc.md:25 resound serve --udp :7000",
        ]
    );
    assert!(mentions("| `--max-line BYTES` |", "--max-line"));
    assert!(!mentions("| `--max-line BYTES` |", "--max"));
    assert!(!mentions("--no-max-line", "--max-line"));
}

/// The README stays a tour (issue 13: at most 20 KB); tables and method live in docs/.
#[test]
fn readme_stays_a_tour() {
    let len = fs::read(root().join("README.md")).unwrap().len();
    assert!(
        len <= 20_000,
        "README.md is {len} bytes: move detail to docs/"
    );
}
