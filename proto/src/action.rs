//! Server actions as policy: which actions a client may run, and what argument each accepts.
//!
//! An action's argument rule is `"none"` (the default: the knock must carry no argument) or a
//! pattern of exactly the form `^[CLASS]{m,n}$` (or `^[CLASS]{n}$`): an argument of `m` to `n`
//! characters (1 <= m <= n <= 32), each one in CLASS. CLASS lists characters and ranges
//! (`a-z0-9._:-`); every character is printable ASCII without space (`!` to `~`, what the wire
//! carries); `\` takes the next character literally (`\]`, `\\`, `\-`, `\^`); a `-` first or
//! last is literal; a leading `^` (a negated class) is refused. Whatever the pattern says, an
//! argument never starts with `-`, so a program can never take it for an option.
//!
//! No regular-expression engine is involved: the pattern is a character set and two lengths,
//! checked in time linear in the argument.

use std::fmt;

use crate::payload::{ACTION_LEN, ARGUMENT_LEN, is_action_name};

/// What argument an action accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ArgumentRule {
    /// No argument: a knock that carries one is refused.
    #[default]
    None,
    /// An argument of `min..=max` characters of a class.
    Pattern(ArgumentPattern),
}

/// The pattern `^[CLASS]{min,max}$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgumentPattern {
    /// Bit `c` is set when the ASCII character `c` is in the class.
    class: u128,
    min: u8,
    max: u8,
    /// The pattern as written.
    text: String,
}

/// Why an argument rule is not one sesame accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentRuleError {
    /// Not `"none"` and not of the form `^[CLASS]{m,n}$`.
    #[error(
        "'{0}' is not \"none\" or a pattern of the form ^[CLASS]{{m,n}}$ (for example ^[a-z0-9-]{{1,16}}$)"
    )]
    Form(String),
    /// The class starts with `^` (a negated class).
    #[error("'{0}': a negated class ([^...]) is not supported; list the characters allowed")]
    Negated(String),
    /// The class is empty (`[]`).
    #[error("'{0}': the class [] is empty")]
    EmptyClass(String),
    /// A character of the class is not printable ASCII, or is a space.
    #[error(
        "'{pattern}': {found:?} cannot be in an argument (printable ASCII without space, ! to ~)"
    )]
    Char {
        /// The pattern.
        pattern: String,
        /// The character.
        found: char,
    },
    /// A range whose start comes after its end (`z-a`).
    #[error("'{pattern}': the range {lo}-{hi} is backwards")]
    Range {
        /// The pattern.
        pattern: String,
        /// Its first character.
        lo: char,
        /// Its last character.
        hi: char,
    },
    /// The lengths are not 1 <= m <= n <= 32.
    #[error("'{pattern}': the lengths {{{min},{max}}} must satisfy 1 <= m <= n <= {ARGUMENT_LEN}")]
    Bounds {
        /// The pattern.
        pattern: String,
        /// `m`.
        min: u64,
        /// `n`.
        max: u64,
    },
}

fn is_wire_char(c: char) -> bool {
    ('!'..='~').contains(&c)
}

impl ArgumentRule {
    /// Parses `"none"` or a pattern `^[CLASS]{m,n}$` / `^[CLASS]{n}$`.
    pub fn parse(text: &str) -> Result<Self, ArgumentRuleError> {
        if text == "none" {
            return Ok(ArgumentRule::None);
        }
        let form = || ArgumentRuleError::Form(text.to_owned());
        let body = text.strip_prefix("^[").ok_or_else(form)?;
        let mut chars = body.chars().peekable();
        if chars.peek() == Some(&'^') {
            return Err(ArgumentRuleError::Negated(text.to_owned()));
        }
        let literal = |c: char| {
            if is_wire_char(c) {
                Ok(c)
            } else {
                Err(ArgumentRuleError::Char {
                    pattern: text.to_owned(),
                    found: c,
                })
            }
        };
        let mut class: u128 = 0;
        let mut closed = false;
        while let Some(c) = chars.next() {
            let lo = match c {
                ']' => {
                    closed = true;
                    break;
                }
                '\\' => literal(chars.next().ok_or_else(form)?)?,
                c => literal(c)?,
            };
            // A range `lo-hi`, unless the `-` is the class's last character.
            let mut ahead = chars.clone();
            if ahead.next() == Some('-') && ahead.peek().is_some_and(|n| *n != ']') {
                chars.next();
                let hi = match chars.next().ok_or_else(form)? {
                    '\\' => literal(chars.next().ok_or_else(form)?)?,
                    c => literal(c)?,
                };
                if lo > hi {
                    return Err(ArgumentRuleError::Range {
                        pattern: text.to_owned(),
                        lo,
                        hi,
                    });
                }
                for b in (lo as u32)..=(hi as u32) {
                    class |= 1 << b;
                }
            } else {
                class |= 1 << (lo as u32);
            }
        }
        if !closed {
            return Err(form());
        }
        if class == 0 {
            return Err(ArgumentRuleError::EmptyClass(text.to_owned()));
        }
        let rest: String = chars.collect();
        let counts = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix("}$"))
            .ok_or_else(form)?;
        let number = |s: &str| -> Result<u64, ArgumentRuleError> {
            if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(form());
            }
            s.parse().map_err(|_| form())
        };
        let (min, max) = match counts.split_once(',') {
            Some((m, n)) => (number(m)?, number(n)?),
            None => {
                let n = number(counts)?;
                (n, n)
            }
        };
        if min < 1 || min > max || max > ARGUMENT_LEN as u64 {
            return Err(ArgumentRuleError::Bounds {
                pattern: text.to_owned(),
                min,
                max,
            });
        }
        Ok(ArgumentRule::Pattern(ArgumentPattern {
            class,
            min: min as u8,
            max: max as u8,
            text: text.to_owned(),
        }))
    }

    /// Whether a knock may carry `argument` (empty: no argument) for an action with this rule:
    /// none for `None`; for a pattern, `m` to `n` characters of the class, not starting with `-`.
    pub fn allows(&self, argument: &str) -> bool {
        match self {
            ArgumentRule::None => argument.is_empty(),
            ArgumentRule::Pattern(p) => {
                let len = argument.len();
                len >= usize::from(p.min)
                    && len <= usize::from(p.max)
                    && !argument.starts_with('-')
                    && argument
                        .bytes()
                        .all(|b| b < 128 && p.class & (1u128 << b) != 0)
            }
        }
    }

    /// Whether the action takes an argument.
    pub fn takes_argument(&self) -> bool {
        matches!(self, ArgumentRule::Pattern(_))
    }
}

impl fmt::Display for ArgumentRule {
    /// As written in the configuration: `none`, or the pattern.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgumentRule::None => f.write_str("none"),
            ArgumentRule::Pattern(p) => f.write_str(&p.text),
        }
    }
}

impl std::str::FromStr for ArgumentRule {
    type Err = ArgumentRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ArgumentRule::parse(s)
    }
}

/// An action a client may run, and the argument it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedAction {
    /// The action's name (as in the payload: 1 to 16 characters of `a-z 0-9 _ -`).
    pub name: String,
    /// Its argument rule.
    pub argument: ArgumentRule,
}

/// An action's name as a small copyable value (for [`crate::tracker::Reason`]): up to 16
/// characters of `a-z 0-9 _ -`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionName {
    bytes: [u8; ACTION_LEN],
    len: u8,
}

impl ActionName {
    /// The name, if it is a valid action name.
    pub fn new(name: &str) -> Option<Self> {
        if !is_action_name(name.as_bytes()) {
            return None;
        }
        let mut bytes = [0u8; ACTION_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(ActionName {
            bytes,
            len: name.len() as u8,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only valid names (ASCII) are ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Debug for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> ArgumentRule {
        ArgumentRule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn none_accepts_only_the_empty_argument() {
        let r = rule("none");
        assert_eq!(r, ArgumentRule::None);
        assert_eq!(ArgumentRule::default(), ArgumentRule::None);
        assert!(r.allows(""));
        assert!(!r.allows("x"));
        assert!(!r.takes_argument());
        assert_eq!(r.to_string(), "none");
    }

    #[test]
    fn patterns_match_their_class_and_lengths() {
        let r = rule("^[a-z0-9-]{1,16}$");
        assert!(r.takes_argument());
        assert_eq!(r.to_string(), "^[a-z0-9-]{1,16}$");
        for ok in ["a", "web-1", "0123456789abcdef"] {
            assert!(r.allows(ok), "{ok}");
        }
        for bad in [
            "",
            "0123456789abcdefg",
            "Web",
            "a_b",
            "a.b",
            "é",
            "-rf",
            "-",
            "a b",
        ] {
            assert!(!r.allows(bad), "{bad}");
        }
        let mac = rule("^[0-9a-fA-F:]{17}$");
        assert!(mac.allows("00:1A:2b:3c:4d:5e"));
        assert!(!mac.allows("00:1A:2b:3c:4d:5"));
        assert!(!mac.allows("00:1A:2b:3c:4d:5e:"));
        assert!(!mac.allows("00:1g:2b:3c:4d:5e"));
    }

    #[test]
    fn classes_take_escapes_and_literal_dashes() {
        let r = rule(r"^[\]\\\-\^a]{1,4}$");
        for ok in ["]", "\\", "^", "a", "a^]\\"] {
            assert!(r.allows(ok), "{ok}");
        }
        assert!(!r.allows("b"));
        // A `-` first is literal too (but no argument starts with it).
        let r = rule("^[-.a]{1,3}$");
        assert!(r.allows("a-."));
        assert!(!r.allows("-a"));
        // The whole printable range.
        let r = rule("^[!-~]{1,32}$");
        assert!(r.allows(&"~".repeat(32)));
        assert!(r.allows("!\"#$%&'()*+,./"));
        assert!(!r.allows(&"~".repeat(33)));
        assert!(!r.allows("a b"));
        // `[` inside a class is an ordinary character.
        assert!(rule("^[[]{1}$").allows("["));
    }

    #[test]
    fn everything_else_is_refused_with_the_form() {
        let form = |s: &str| ArgumentRuleError::Form(s.to_owned());
        for s in [
            "",
            "None",
            "any",
            "[a-z]{1,2}",
            "^[a-z]{1,2}",
            "^[a-z]{1,2}$x",
            "^[a-z]+$",
            "^[a-z]*$",
            "^[a-z]{,2}$",
            "^[a-z]{1,}$",
            "^[a-z]{1, 2}$",
            "^[a-z]{+1}$",
            "^[a-z]$",
            "^[a-z{1,2}$",
            "^[a-z]{1,2}$$",
            "^([a-z]){1,2}$",
            "^[a-z]{1,2}|x$",
            r"^[a\",
            "^[a-",
            "^[a-z]{99999999999}$",
        ] {
            assert_eq!(ArgumentRule::parse(s), Err(form(s)), "{s}");
        }
        assert!(matches!(
            ArgumentRule::parse("^[^a]{1,2}$"),
            Err(ArgumentRuleError::Negated(_))
        ));
        assert!(matches!(
            ArgumentRule::parse("^[]{1,2}$"),
            Err(ArgumentRuleError::EmptyClass(_))
        ));
        assert!(matches!(
            ArgumentRule::parse("^[a z]{1,2}$"),
            Err(ArgumentRuleError::Char { found: ' ', .. })
        ));
        assert!(matches!(
            ArgumentRule::parse("^[aé]{1,2}$"),
            Err(ArgumentRuleError::Char { found: 'é', .. })
        ));
        assert!(matches!(
            ArgumentRule::parse("^[\t]{1,2}$"),
            Err(ArgumentRuleError::Char { found: '\t', .. })
        ));
        assert!(matches!(
            ArgumentRule::parse("^[z-a]{1,2}$"),
            Err(ArgumentRuleError::Range {
                lo: 'z',
                hi: 'a',
                ..
            })
        ));
        for s in [
            "^[a]{0,2}$",
            "^[a]{0}$",
            "^[a]{3,2}$",
            "^[a]{1,33}$",
            "^[a]{33}$",
        ] {
            assert!(
                matches!(
                    ArgumentRule::parse(s),
                    Err(ArgumentRuleError::Bounds { .. })
                ),
                "{s}"
            );
        }
        let msg = ArgumentRule::parse("^[a-z]+$").unwrap_err().to_string();
        assert!(msg.contains("^[CLASS]{m,n}$"), "{msg}");
    }

    #[test]
    fn action_names_are_small_and_valid() {
        let n = ActionName::new("wake-host_2").unwrap();
        assert_eq!(n.as_str(), "wake-host_2");
        assert_eq!(n.to_string(), "wake-host_2");
        assert!(ActionName::new("").is_none());
        assert!(ActionName::new("Wake").is_none());
        assert!(ActionName::new(&"a".repeat(17)).is_none());
        assert_eq!(ActionName::new(&"a".repeat(16)).unwrap().as_str().len(), 16);
    }

    proptest::proptest! {
        /// A pattern over a random set of characters and lengths agrees with a naive check.
        #[test]
        fn patterns_agree_with_a_naive_matcher(
            set in proptest::collection::btree_set(0x21u8..=0x7e, 1..20),
            min in 1u8..=32,
            extra in 0u8..=31,
            arg in proptest::collection::vec(0x20u8..=0x7f, 0..40),
        ) {
            let max = (min + extra).min(32);
            let class: String = set
                .iter()
                .map(|&b| {
                    let c = b as char;
                    if matches!(c, ']' | '\\' | '-' | '^') { format!("\\{c}") } else { c.to_string() }
                })
                .collect();
            let text = format!("^[{class}]{{{min},{max}}}$");
            let r = ArgumentRule::parse(&text).unwrap();
            let arg = String::from_utf8(arg).unwrap();
            let naive = (usize::from(min)..=usize::from(max)).contains(&arg.len())
                && !arg.starts_with('-')
                && arg.bytes().all(|b| set.contains(&b));
            proptest::prop_assert_eq!(r.allows(&arg), naive, "{} {:?}", text, arg);
        }

        /// The parser never panics.
        #[test]
        fn any_text_parses_or_is_refused(s in ".{0,40}") {
            let _ = ArgumentRule::parse(&s);
        }
    }
}
