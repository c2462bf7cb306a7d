//! Jsonnet files (`.jsonnet`) in a plain folder, evaluated as Argo CD's directory source
//! does: with top-level arguments, external variables and library folders
//! ([`JsonnetOptions`]). Imports (`.libsonnet`, `.jsonnet`, `importstr`, `importbin`) are
//! read from the same tree as the manifests, the importing file's folder first, then each
//! library folder; nothing outside the repository is read. Evaluation runs on a thread of
//! its own with a large stack (the parser recurses), its call depth bounded. Start at
//! [`evaluate`]; research in `docs/notes/jsonnet.md`.
//!
//! # Security
//! A program can loop or allocate without end, so `tether render/plan/apply` and the agent
//! evaluate it in a child process, `tether internal-jsonnet` ([`evaluate_in_child`]), under
//! the render limits of time and memory that bound helm and kustomize
//! ([`super::external`]). Only a library caller without the `tether` program (a test)
//! evaluates in its own process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rsjsonnet_lang::arena::Arena;
use rsjsonnet_lang::program::{
    Callbacks, EvalErrorKind, EvalStackTraceItem, ImportError, NativeError, Program, Thunk,
    Value as JValue, ValueKind,
};
use rsjsonnet_lang::span::{SpanContextId, SpanId};
use serde_json::Value;

use crate::source::tree::{EntryKind, Tree, join_within, parent};

/// A value given to a Jsonnet program: a string, or Jsonnet code (`--jsonnet-ext-code`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Argument {
    Str(String),
    Code(String),
}

/// Argo CD's `directory.jsonnet` options.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JsonnetOptions {
    /// `std.extVar(name)`.
    pub ext_vars: Vec<(String, Argument)>,
    /// Arguments of a file whose value is a function (top-level arguments).
    pub tlas: Vec<(String, Argument)>,
    /// Repository folders searched for imports after the importing file's folder (`-J`).
    pub libs: Vec<String>,
}

/// Nested calls a program may make before it is stopped (as `jsonnet --max-stack`).
const MAX_STACK: usize = 500;
/// The evaluating thread's stack: deep literals recurse in the parser (see the notes).
const STACK_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of nesting brackets a source may open before it is refused unparsed.
const MAX_NESTING: usize = 400;

/// Evaluates `file` (repository-relative, its bytes in `source`) to JSON. Errors are
/// `file:line: message`, for the importing chain too.
pub fn evaluate(
    tree: &dyn Tree,
    file: &str,
    source: &[u8],
    options: &JsonnetOptions,
    max_file_bytes: u64,
) -> Result<Value, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("jsonnet".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || {
                evaluate_here(tree, file, source, options, max_file_bytes)
            })
            .map_err(|e| format!("{file}: cannot start the Jsonnet evaluation: {e}"))?
            .join()
            .map_err(|_| format!("{file}: the Jsonnet evaluation failed unexpectedly"))?
    })
}

/// The program that evaluates Jsonnet in a child process, set once by the `tether` binary
/// at its start ([`set_program`]).
static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Says that `program` (the running `tether`) evaluates Jsonnet in child processes; a
/// library caller that never says so (a test) evaluates in its own process.
pub fn set_program(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// The program that evaluates Jsonnet in a child process, if one was set.
pub fn default_program() -> Option<PathBuf> {
    PROGRAM.get().cloned()
}

/// What the child evaluates, written next to the render's copy of the repository (the
/// values of variables stay off its command line).
#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    file: String,
    options: JsonnetOptions,
    max_file_bytes: u64,
}

/// Evaluates `file` as [`evaluate`] does, in `program internal-jsonnet` run over
/// `snapshot` under `limits`: a program that runs too long or takes too much memory is
/// killed, and the error says which limit stopped it.
pub fn evaluate_in_child(
    program: &Path,
    snapshot: &super::snapshot::Snapshot,
    file: &str,
    options: &JsonnetOptions,
    max_file_bytes: u64,
    limits: &super::external::Limits,
) -> Result<Value, String> {
    let home = snapshot.home()?;
    let request = home.join("jsonnet-request.json");
    let body = serde_json::to_vec(&Request {
        file: file.to_string(),
        options: options.clone(),
        max_file_bytes,
    })
    .map_err(|e| e.to_string())?;
    std::fs::write(&request, body).map_err(|e| format!("{file}: {e}"))?;
    let args = [
        "internal-jsonnet".to_string(),
        request.display().to_string(),
    ];
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The runner's own messages start with the program's name: say what it was running.
    let output = super::external::run(program, &args, &snapshot.root(), &home, limits).map_err(
        |message| match message.strip_prefix(&format!("{name} ")) {
            Some(rest) => format!("{file}: the Jsonnet evaluation {rest}"),
            None => format!("{file}: {message}"),
        },
    )?;
    let answer: Answer = serde_json::from_slice(&output)
        .map_err(|e| format!("{file}: the Jsonnet evaluation's answer: {e}"))?;
    match answer {
        Answer::Value(value) => Ok(value),
        // The evaluation's own error, located in the repository already.
        Answer::Error(message) => Err(message),
    }
}

/// What the child answers on its standard output: the file's value or the evaluation's
/// error (a crash is a failed exit instead).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Value(Value),
    Error(String),
}

/// The child's side of [`evaluate_in_child`]: evaluates the request at `request` over the
/// repository copy in the current folder and answers the value or the evaluation's error,
/// as JSON; `Err` when the request itself cannot be read.
pub fn serve_request(request: &Path) -> Result<Vec<u8>, String> {
    let body = std::fs::read(request).map_err(|e| format!("{}: {e}", request.display()))?;
    let request: Request = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let tree = crate::source::tree::DirTree::new(root).map_err(|e| e.to_string())?;
    let evaluated = tree
        .read(&request.file, request.max_file_bytes)
        .map_err(|e| e.to_string())
        .and_then(|source| {
            evaluate(
                &tree,
                &request.file,
                &source,
                &request.options,
                request.max_file_bytes,
            )
        });
    let answer = match evaluated {
        Ok(value) => Answer::Value(value),
        Err(message) => Answer::Error(message),
    };
    serde_json::to_vec(&answer).map_err(|e| e.to_string())
}

/// Where each loaded source came from, for messages.
struct Sources {
    /// Span context → (file, bytes).
    files: HashMap<SpanContextId, (String, Vec<u8>)>,
}

impl Sources {
    /// `file:line` of a span.
    fn locate(&self, program: &Program<'_>, span: SpanId) -> Option<String> {
        let (context, start, _) = program.span_manager().get_span(span);
        let (file, bytes) = self.files.get(&context)?;
        let line = 1 + bytes[..start.min(bytes.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        Some(format!("{file}:{line}"))
    }
}

struct Imports<'t, 'p> {
    tree: &'t dyn Tree,
    libs: Vec<String>,
    max_file_bytes: u64,
    sources: Sources,
    /// Canonical path → its thunk: each file is loaded once.
    loaded: HashMap<String, Thunk<'p>>,
    /// Why the last import failed (rsjsonnet's error carries no reason).
    last_failure: Option<String>,
}

impl<'p> Imports<'_, 'p> {
    /// The repository path `path` names when imported from the file of `from`: the
    /// importing file's folder first, then each library folder.
    fn resolve(
        &mut self,
        program: &Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<(String, Vec<u8>), ImportError> {
        let (context, _, _) = program.span_manager().get_span(from);
        let importer = self
            .sources
            .files
            .get(&context)
            .map(|(file, _)| file.clone())
            .unwrap_or_default();
        let folders =
            std::iter::once(parent(&importer).to_string()).chain(self.libs.iter().cloned());
        let mut refused = None;
        for folder in folders {
            let Some(candidate) = join_within(&folder, path) else {
                refused = Some(format!(
                    "import {path:?} from {importer}: leaves the repository; tether reads nothing outside it"
                ));
                continue;
            };
            // A link is followed inside the tree only (a link to a folder is no file).
            let target = match self.tree.entry_kind(&candidate) {
                Some(Some(EntryKind::File)) => candidate.clone(),
                Some(Some(EntryKind::Symlink)) => {
                    match super::resolve_symlink(self.tree, &candidate) {
                        Ok(Some(target)) => target,
                        Ok(None) => continue,
                        Err(problem) => {
                            refused = Some(format!("import {path:?} from {importer}: {problem}"));
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            return match self.tree.read(&target, self.max_file_bytes) {
                Ok(bytes) => Ok((candidate, bytes)),
                Err(e) => {
                    self.last_failure = Some(format!("import {path:?} from {importer}: {e}"));
                    Err(ImportError)
                }
            };
        }
        self.last_failure = Some(refused.unwrap_or_else(|| {
            format!(
                "import {path:?} from {importer}: not found in {}{}",
                if parent(&importer).is_empty() {
                    "."
                } else {
                    parent(&importer)
                },
                if self.libs.is_empty() {
                    String::new()
                } else {
                    format!(" nor in the library folders {}", self.libs.join(", "))
                }
            )
        }));
        Err(ImportError)
    }

    fn load(
        &mut self,
        program: &mut Program<'p>,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<Thunk<'p>, String> {
        if let Some(thunk) = self.loaded.get(file) {
            return Ok(thunk.clone());
        }
        check_nesting(file, &bytes)?;
        let (context, _) = program
            .span_manager_mut()
            .insert_source_context(bytes.len());
        let loaded = program.load_source(context, &bytes, true, file);
        self.sources
            .files
            .insert(context, (file.to_string(), bytes));
        let thunk = loaded.map_err(|e| format!("{file}: cannot parse it: {e:?}"))?;
        self.loaded.insert(file.to_string(), thunk.clone());
        Ok(thunk)
    }
}

impl<'p> Callbacks<'p> for Imports<'_, 'p> {
    fn import(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<Thunk<'p>, ImportError> {
        let (file, bytes) = self.resolve(program, from, path)?;
        self.load(program, &file, bytes).map_err(|why| {
            self.last_failure = Some(why);
            ImportError
        })
    }

    fn import_str(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<String, ImportError> {
        let (file, bytes) = self.resolve(program, from, path)?;
        String::from_utf8(bytes).map_err(|_| {
            self.last_failure = Some(format!("importstr {file}: not UTF-8; use importbin"));
            ImportError
        })
    }

    fn import_bin(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<Vec<u8>, ImportError> {
        Ok(self.resolve(program, from, path)?.1)
    }

    fn trace(&mut self, _program: &mut Program<'p>, message: &str, _stack: &[EvalStackTraceItem]) {
        tracing::debug!(message, "std.trace in a Jsonnet file");
    }

    fn native_call(
        &mut self,
        _program: &mut Program<'p>,
        _name: rsjsonnet_lang::interner::InternedStr<'p>,
        _args: &[JValue<'p>],
    ) -> Result<JValue<'p>, NativeError> {
        Err(NativeError)
    }
}

/// Refuses sources whose brackets nest deeper than [`MAX_NESTING`] before the recursive
/// parser sees them (a stack overflow cannot be caught).
fn check_nesting(file: &str, bytes: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for b in bytes {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(format!(
            "{file}: nests {deepest} levels deep, above tether's limit of {MAX_NESTING}"
        ));
    }
    Ok(())
}

fn evaluate_here(
    tree: &dyn Tree,
    file: &str,
    source: &[u8],
    options: &JsonnetOptions,
    max_file_bytes: u64,
) -> Result<Value, String> {
    let arena = Arena::new();
    let mut program = Program::new(&arena);
    program.set_max_stack(MAX_STACK);
    let mut imports = Imports {
        tree,
        libs: options.libs.clone(),
        max_file_bytes,
        sources: Sources {
            files: HashMap::new(),
        },
        loaded: HashMap::new(),
        last_failure: None,
    };
    let mut names = std::collections::BTreeSet::new();
    for (name, argument) in &options.ext_vars {
        // add_ext_var panics on a name given twice.
        if !names.insert(name.as_str()) {
            return Err(format!("external variable {name} is given twice"));
        }
        let thunk = argument_thunk(
            &mut program,
            &mut imports,
            &format!("<ext var {name}>"),
            argument,
        )?;
        let interned = program.intern_str(name);
        program.add_ext_var(interned, &thunk);
    }
    let mut tlas = Vec::new();
    for (name, argument) in &options.tlas {
        let thunk = argument_thunk(
            &mut program,
            &mut imports,
            &format!("<top-level argument {name}>"),
            argument,
        )?;
        tlas.push((program.intern_str(name), thunk));
    }
    let thunk = imports.load(&mut program, file, source.to_vec())?;
    let value = program
        .eval_value(&thunk, &mut imports)
        .map_err(|e| describe_error(&program, &imports, file, &e.kind, &e.stack_trace))?;
    let value = if value.is_function() {
        program
            .eval_call(&thunk, &[], &tlas, &mut imports)
            .map_err(|e| describe_error(&program, &imports, file, &e.kind, &e.stack_trace))?
    } else {
        value
    };
    to_json(&value, 0).map_err(|why| format!("{file}: {why}"))
}

/// How deep a value may nest (the conversion recurses; Kubernetes objects nest a few dozen
/// levels at most).
const MAX_DEPTH: usize = 200;

fn argument_thunk<'p>(
    program: &mut Program<'p>,
    imports: &mut Imports<'_, 'p>,
    label: &str,
    argument: &Argument,
) -> Result<Thunk<'p>, String> {
    match argument {
        Argument::Str(text) => Ok(program.value_to_thunk(&JValue::string(text))),
        Argument::Code(code) => imports.load(program, label, code.as_bytes().to_vec()),
    }
}

/// `file:line: what went wrong`, naming the innermost place the stack trace knows.
fn describe_error(
    program: &Program<'_>,
    imports: &Imports<'_, '_>,
    file: &str,
    kind: &EvalErrorKind,
    stack: &[EvalStackTraceItem],
) -> String {
    let own_span = match kind {
        EvalErrorKind::ExplicitError { span, .. }
        | EvalErrorKind::AssertFailed { span, .. }
        | EvalErrorKind::ImportFailed { span, .. } => Some(*span),
        EvalErrorKind::Other { span, .. } => *span,
        _ => None,
    };
    let traced = stack.iter().rev().find_map(|item| match item {
        EvalStackTraceItem::Expr { span }
        | EvalStackTraceItem::Variable { span, .. }
        | EvalStackTraceItem::Import { span } => Some(*span),
        EvalStackTraceItem::Call { span, .. }
        | EvalStackTraceItem::ArrayItem { span, .. }
        | EvalStackTraceItem::ObjectField { span, .. } => *span,
        _ => None,
    });
    let at = own_span
        .or(traced)
        .and_then(|span| imports.sources.locate(program, span))
        .unwrap_or_else(|| file.to_string());
    let what = match kind {
        EvalErrorKind::ExplicitError { message, .. } => format!("error: {message}"),
        EvalErrorKind::AssertFailed { message, .. } => {
            format!(
                "assertion failed{}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        }
        EvalErrorKind::ImportFailed { path, .. } => imports
            .last_failure
            .clone()
            .unwrap_or_else(|| format!("cannot import {path:?}")),
        EvalErrorKind::UnknownExtVar { name } => format!(
            "external variable {name} is not set; set it with --jsonnet-ext-str {name}=… (an Application: spec.render.jsonnet.extVars)"
        ),
        EvalErrorKind::StackOverflow | EvalErrorKind::InfiniteRecursion => {
            format!("the evaluation went deeper than {MAX_STACK} calls")
        }
        EvalErrorKind::CallParamNotBound { param_name, .. } => format!(
            "parameter {param_name} has no value: give it as a top-level argument (--jsonnet-tla-str {param_name}=…; an Application: spec.render.jsonnet.tlas)"
        ),
        EvalErrorKind::Other { message, .. } => message.clone(),
        other => format!("{other:?}"),
    };
    format!("{at}: {what}")
}

/// The value as JSON; a function (one that needs arguments nobody gave) is an error, and
/// so is nesting deeper than [`MAX_DEPTH`].
fn to_json(value: &JValue<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "its value nests deeper than {MAX_DEPTH} levels; no Kubernetes object does"
        ));
    }
    Ok(match value.kind() {
        ValueKind::Null => Value::Null,
        ValueKind::Bool(b) => Value::Bool(b),
        ValueKind::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        ValueKind::String(s) => Value::String(s),
        ValueKind::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| to_json(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Object(fields) => {
            let mut map = serde_json::Map::new();
            for (name, field) in fields {
                map.insert(name.value().to_string(), to_json(&field, depth + 1)?);
            }
            Value::Object(map)
        }
        ValueKind::Function => {
            return Err(
                "evaluates to a function: give its parameters as top-level arguments (--jsonnet-tla-str NAME=VALUE; an Application: spec.render.jsonnet.tlas)"
                    .into(),
            );
        }
    })
}
