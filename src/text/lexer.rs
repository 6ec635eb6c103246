//! The lexer of the text form: source text to tokens with byte spans. Comments (`#` to the
//! end of the line) and whitespace separate tokens and are dropped.

use super::error::{TextError, TextErrorKind};
pub(crate) use crate::ir::KEYWORDS;

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// A name or keyword: `[A-Za-z_][A-Za-z0-9_]*`.
    Ident(String),
    /// A decimal literal, already checked to be a finite f64.
    Number(f64),
    /// Punctuation and operators: `( ) { } , ; = + - * / ^ == != < <= > >=`.
    Punct(&'static str),
    /// The end of the source.
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("`{name}`"),
            Tok::Number(_) => "a number".to_string(),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

/// A token and the bytes `start..end` it covers.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Operators, longest first so that `<=` wins over `<`.
const PUNCTS: [&str; 18] = [
    "==", "!=", "<=", ">=", "(", ")", "{", "}", ",", ";", "=", "+", "-", "*", "/", "^", "<", ">",
];

/// Splits `source` into tokens, ending with [`Tok::Eof`].
pub(super) fn lex(source: &str) -> Result<Vec<Token>, Box<TextError>> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let tok = Tok::Ident(source[start..i].to_string());
            tokens.push(Token { tok, start, end: i });
        } else if c.is_ascii_digit()
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            i = number_end(bytes, i);
            let text = &source[start..i];
            let value = text.parse::<f64>().ok().filter(|v| v.is_finite());
            let Some(value) = value else {
                let kind = TextErrorKind::BadNumber {
                    text: text.to_string(),
                };
                return Err(TextError::at(kind, source, start, i));
            };
            tokens.push(Token {
                tok: Tok::Number(value),
                start,
                end: i,
            });
        } else if let Some(p) = PUNCTS.iter().find(|p| source[i..].starts_with(**p)) {
            i += p.len();
            tokens.push(Token {
                tok: Tok::Punct(p),
                start,
                end: i,
            });
        } else {
            let found = source[i..].chars().next().expect("i is on a char boundary");
            let end = i + found.len_utf8();
            return Err(TextError::at(
                TextErrorKind::UnexpectedChar { found },
                source,
                i,
                end,
            ));
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        start: source.len(),
        end: source.len(),
    });
    Ok(tokens)
}

/// The end of the number starting at `i`: digits, an optional fraction, an optional
/// exponent, and any letters or digits glued to it (so `1e` or `2x` is one bad number).
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    let digits = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        digits(&mut i);
    }
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_take_the_longest_match_and_comments_vanish() {
        assert_eq!(
            toks("a<=b # c\n>=1e-3"),
            vec![
                Tok::Ident("a".into()),
                Tok::Punct("<="),
                Tok::Ident("b".into()),
                Tok::Punct(">="),
                Tok::Number(1e-3),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn malformed_numbers_and_stray_characters_are_errors() {
        for bad in ["1e", "2x", "1.2.3", "1e999", "a ! b", "λ"] {
            assert!(lex(bad).is_err(), "{bad}");
        }
        assert_eq!(toks(".5"), vec![Tok::Number(0.5), Tok::Eof]);
    }
}
