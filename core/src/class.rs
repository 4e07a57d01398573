//! What a path holds, which decides how its freshness is judged, and the globs operators use
//! to say so (`immutable = ["*.tar.gz"]`).

/// A path glob: `*` matches within one segment, `**` matches any number of characters.
#[derive(Debug, Clone)]
pub struct PathPattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    Star,
    DoubleStar,
}

impl PathPattern {
    /// Compile `pattern`; the only error is an empty pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty path pattern".into());
        }
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' {
                if !lit.is_empty() {
                    tokens.push(Token::Literal(std::mem::take(&mut lit)));
                }
                if chars.peek() == Some(&'*') {
                    chars.next();
                    tokens.push(Token::DoubleStar);
                } else {
                    tokens.push(Token::Star);
                }
            } else {
                lit.push(c);
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(PathPattern { tokens })
    }

    /// Whether `path` (starting with `/`) matches. A pattern without a leading `/` may match
    /// from any position in the path, as if it began with `**`.
    pub fn matches(&self, path: &str) -> bool {
        let anchored = matches!(self.tokens.first(), Some(Token::Literal(l)) if l.starts_with('/'));
        if anchored {
            Self::match_from(&self.tokens, path)
        } else {
            (0..=path.len())
                .filter(|&i| path.is_char_boundary(i))
                .any(|i| Self::match_from(&self.tokens, &path[i..]))
        }
    }

    fn match_from(tokens: &[Token], s: &str) -> bool {
        match tokens.split_first() {
            None => s.is_empty(),
            Some((Token::Literal(l), rest)) => {
                s.strip_prefix(l.as_str()).is_some_and(|r| Self::match_from(rest, r))
            }
            Some((star, rest)) => {
                let limit = if *star == Token::Star {
                    s.find('/').unwrap_or(s.len())
                } else {
                    s.len()
                };
                (0..=limit)
                    .filter(|&i| s.is_char_boundary(i))
                    .any(|i| Self::match_from(rest, &s[i..]))
            }
        }
    }
}

/// What a path holds, which decides how its freshness is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// Versioned artefacts: cached for good, never revalidated, served stale without limit.
    Immutable,
    /// Indexes that change when something is published: the repository's `metadata_ttl`
    /// (when set) replaces the upstream's freshness, and stale-while-revalidate applies.
    Metadata,
    /// Everything else: the upstream's headers, by RFC 9111.
    Http,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = PathPattern::new("*.tar.gz").unwrap();
        assert!(p.matches("/a/b/x-1.0.tar.gz"));
        assert!(!p.matches("/a/b/x-1.0.tar.gz.sig"));
        let anchored = PathPattern::new("/releases/*/asset").unwrap();
        assert!(anchored.matches("/releases/v1/asset"));
        assert!(!anchored.matches("/releases/v1/x/asset"));
        assert!(!anchored.matches("/x/releases/v1/asset"));
        let deep = PathPattern::new("/pool/**").unwrap();
        assert!(deep.matches("/pool/main/a/b.deb"));
        assert!(!deep.matches("/dists/x"));
    }
}
