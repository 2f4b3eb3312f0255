//! `${NAME}` and `${NAME:-default}` in a configuration file.

use super::ConfigError;

/// `text` with every `${NAME}` replaced by `vars(NAME)`, or by `default` in `${NAME:-default}`
/// when `vars` has none. `$` not followed by `{` stays as it is, and so do comment lines (those
/// whose first non-blank character is `#`).
pub(super) fn substitute(
    text: &str,
    vars: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            substitute_line(line, number + 1, &vars, &mut out)?;
        }
    }
    Ok(out)
}

fn substitute_line(
    text: &str,
    line: usize,
    vars: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ConfigError> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::Env {
                line,
                reason: "`${` without a closing `}`".into(),
            });
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::Env {
                line,
                reason: format!("`${{{inner}}}`: not a variable name (letters, digits, `_`)"),
            });
        }
        match (vars(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::Env {
                    line,
                    reason: format!(
                        "environment variable {name} is not set (write `${{{name}:-default}}` \
                         for a default)"
                    ),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars(name: &str) -> Option<String> {
        (name == "A").then(|| "1.2.3.4:5".to_owned())
    }

    #[test]
    fn variables_and_defaults_are_replaced() {
        assert_eq!(
            substitute("a = \"${A}\" b = \"${B:-x:1}\" c = \"$5\"", vars).unwrap(),
            "a = \"1.2.3.4:5\" b = \"x:1\" c = \"$5\""
        );
    }

    #[test]
    fn a_missing_variable_names_it_and_its_line() {
        let err = substitute("x = 1\ny = \"${NOPE}\"", vars).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2") && text.contains("NOPE"), "{text}");
        assert!(substitute("y = \"${A\"", vars).is_err());
        // Comment lines are left alone.
        assert_eq!(
            substitute("  # see ${NOPE}\nx = \"${A}\"\n", vars).unwrap(),
            "  # see ${NOPE}\nx = \"1.2.3.4:5\"\n"
        );
        assert!(substitute("y = \"${A B}\"", vars).is_err());
    }
}
