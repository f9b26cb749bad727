//! E-mail addresses: the one rule signup (`POST /api/users`) and `/chat` logins share.

use crate::error::AppError;

/// A pragmatic e-mail check: one `@`, a non-empty local part, a dotted domain, ≤ 254 bytes.
pub fn validate_email(email: &str) -> Result<(), AppError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid("email is not a valid e-mail address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        for ok in ["a@b.io", "first.last+tag@sub.example.com"] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io", "a@b.", "a@b@c.io",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }
}
