//! The admin API's bearer tokens, read with the config so a reload rotates them.

/// Reads the tokens a config names: a file of `name:secret` (or bare `secret`) lines, and/or an
/// environment variable holding one secret (named after the variable). An error names its key.
pub fn load_tokens(
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Vec<(String, String)>, (&'static str, String)> {
    let mut out = Vec::new();
    if let Some(path) = file {
        let key = "admin.token_file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| (key, format!("cannot read {}: {e}", path.display())))?;
        for (i, line) in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
        {
            let (name, secret) = line.split_once(':').map_or_else(
                || (format!("token{}", i + 1), line),
                |(n, s)| (n.trim().to_string(), s.trim()),
            );
            if secret.len() < 16 {
                return Err((
                    key,
                    format!(
                        "{}: the token {name:?} is shorter than 16 characters",
                        path.display()
                    ),
                ));
            }
            out.push((name, secret.to_string()));
        }
    }
    if let Some(var) = env {
        let key = "admin.token_env";
        match std::env::var(var) {
            Ok(s) if s.trim().len() >= 16 => out.push((var.to_string(), s.trim().to_string())),
            Ok(_) => return Err((key, format!("${var} is shorter than 16 characters"))),
            Err(_) => return Err((key, format!("${var} is not set"))),
        }
    }
    Ok(out)
}
