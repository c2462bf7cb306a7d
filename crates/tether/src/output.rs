//! Output formats shared by every command: `-o text|json|yaml`, as in kubectl.
//!
//! Commands build a serialisable value once; `text` is each command's own human layout,
//! `json` and `yaml` print the same value so scripts get every field.

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON, one document, pretty-printed.
    Json,
    /// YAML, one document.
    Yaml,
    /// Markdown, for a pull-request comment (`plan`; other commands print text).
    Markdown,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot encode output as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// Writes `value` as JSON or YAML. For `Text`, the caller prints its own layout instead.
pub fn write_structured<T: Serialize>(
    out: &mut impl Write,
    format: OutputFormat,
    value: &T,
) -> Result<(), Error> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml | OutputFormat::Text | OutputFormat::Markdown => {
            let text = serde_saphyr::to_string(value)?;
            out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        name: &'static str,
        mode: u32,
        tags: Vec<&'static str>,
    }

    fn render(format: OutputFormat) -> String {
        let mut buf = Vec::new();
        let value = Sample {
            name: "web",
            mode: 420,
            tags: vec!["a", "b"],
        };
        write_structured(&mut buf, format, &value).expect("writing to a Vec cannot fail");
        String::from_utf8(buf).expect("serializers write UTF-8")
    }

    #[test]
    fn json_and_yaml_carry_the_same_fields() {
        let json: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json)).expect("valid JSON");
        let yaml: serde_json::Value =
            serde_saphyr::from_str(&render(OutputFormat::Yaml)).expect("valid YAML");
        assert_eq!(json, yaml);
        assert_eq!(json["mode"], 420);
        assert_eq!(json["tags"][1], "b");
    }
}
