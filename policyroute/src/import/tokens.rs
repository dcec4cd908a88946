//! Words of an `iptables-save` line: white space separates them, except inside double
//! quotes (comments), where `\"` and `\\` stand for themselves.
pub fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => word.extend(chars.next()),
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        if quoted {
            return Err("unterminated quote".to_owned());
        }
        out.push(word);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::tokens;

    #[test]
    fn quotes_keep_spaces_and_escapes() {
        let got = tokens(r#"-m comment --comment "web \"fast\" path" -j MARK"#).unwrap();
        assert_eq!(
            got,
            [
                "-m",
                "comment",
                "--comment",
                "web \"fast\" path",
                "-j",
                "MARK"
            ]
        );
        assert!(tokens("--comment \"open").is_err());
    }
}
