//! Name rules shared by the IR and the text form: what may name an optimizer, a
//! hyperparameter or a state slot.

/// Whether `name` can name an optimizer, hyperparameter or state: an identifier that is not
/// a keyword of the text form or a built-in symbol.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Words with a meaning of their own in the text form.
pub(crate) const KEYWORDS: [&str; 7] =
    ["optimizer", "let", "state", "scalar", "flags", "inf", "nan"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("exp_avg") && is_identifier("_b2"));
        assert!(!is_identifier("2b") && !is_identifier("a b") && !is_identifier(""));
    }
}
