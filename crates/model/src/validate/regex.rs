//! Regular expressions as Envoy runs them: RE2 syntax, bounded in size.
//!
//! regex-syntax parses a superset of RE2. What it accepts and RE2 does not
//! (nested classes and class operations, the `x` and `R` flags, `\<`-style
//! word boundaries, a repetition of a repetition, `\u` escapes, code points
//! past `\x{FF}` (Envoy runs RE2 on Latin-1), and Unicode class names RE2
//! lacks) is refused here by walking the syntax tree, so Envoy never sees a
//! pattern it would refuse. `crates/agent/tests/regex_differential.rs`
//! checks that against Envoy itself, on a corpus and on generated patterns.

use regex_syntax::ast::{self, Ast, Visitor};

use crate::model::limits;
use crate::problem::FieldPath;

use super::obj::Ctx;

/// `s` when it is an RE2 expression within the limits; else reports why at `at`.
pub(super) fn regex(s: &str, at: &FieldPath, cx: &mut Ctx) -> Option<String> {
    match check(s) {
        Ok(()) => Some(s.to_owned()),
        Err(e) => {
            cx.error(at, e);
            None
        }
    }
}

fn check(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > limits::MAX_REGEX {
        return Err(format!(
            "must be at most {} bytes (got {})",
            limits::MAX_REGEX,
            s.len()
        ));
    }
    let first_line = |e: String| e.lines().last().unwrap_or_default().trim().to_owned();
    let tree = ast::parse::Parser::new().parse(s).map_err(|e| {
        format!(
            "is not a valid regular expression: {}",
            first_line(e.to_string())
        )
    })?;
    ast::visit(&tree, Re2Only)?;
    let hir = regex_syntax::hir::translate::Translator::new()
        .translate(s, &tree)
        .map_err(|e| {
            format!(
                "is not a valid regular expression: {}",
                first_line(e.to_string())
            )
        })?;
    let c = cost(&hir);
    if c > limits::MAX_REGEX_COST {
        return Err(format!(
            "is too complex (about {c} steps, at most {} allowed); use fewer repetitions or smaller classes",
            limits::MAX_REGEX_COST
        ));
    }
    Ok(())
}

/// A rough upper bound of the size of the program RE2 compiles `h` into:
/// repetitions copy their body, and a class costs one step per range (RE2
/// reads `\d` as ASCII, so this overstates it). Envoy refuses programs past
/// a runtime limit, which the bootstrap sets far above what this allows.
fn cost(h: &regex_syntax::hir::Hir) -> usize {
    use regex_syntax::hir::{Class, HirKind};
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => 1,
        HirKind::Literal(l) => l.0.len(),
        HirKind::Class(Class::Unicode(c)) => c.ranges().len(),
        HirKind::Class(Class::Bytes(c)) => c.ranges().len(),
        HirKind::Repetition(r) => {
            let copies = r.max.unwrap_or(r.min).max(1) as usize;
            cost(&r.sub).saturating_mul(copies).saturating_add(1)
        }
        HirKind::Capture(c) => cost(&c.sub) + 2,
        HirKind::Concat(items) => items.iter().map(cost).fold(0, usize::saturating_add),
        HirKind::Alternation(items) => items
            .iter()
            .map(cost)
            .fold(items.len(), usize::saturating_add),
    }
}

/// Refuses the parts of the syntax tree RE2 lacks, and large repetitions.
struct Re2Only;

impl Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::Repetition(r) => {
                if matches!(*r.ast, Ast::Repetition(_)) {
                    return Err(
                        "repeats a repetition (a**, a{2}{3}), which RE2 refuses; group it: (?:a*)*"
                            .into(),
                    );
                }
                let n = match r.op.kind {
                    ast::RepetitionKind::Range(ast::RepetitionRange::Exactly(n))
                    | ast::RepetitionKind::Range(ast::RepetitionRange::AtLeast(n)) => n,
                    ast::RepetitionKind::Range(ast::RepetitionRange::Bounded(_, n)) => n,
                    _ => 0,
                };
                if n > limits::MAX_REGEX_REPEAT {
                    return Err(format!(
                        "repeats {n} times; at most {} is allowed (use + or * instead)",
                        limits::MAX_REGEX_REPEAT
                    ));
                }
            }
            Ast::Assertion(a) => {
                use ast::AssertionKind as K;
                if !matches!(
                    a.kind,
                    K::StartLine
                        | K::EndLine
                        | K::StartText
                        | K::EndText
                        | K::WordBoundary
                        | K::NotWordBoundary
                ) {
                    return Err("uses a word-boundary form RE2 lacks; use \\b".into());
                }
            }
            Ast::Flags(f) => flags(&f.flags)?,
            Ast::Literal(l) => literal(l)?,
            Ast::ClassUnicode(c) => unicode_class(c)?,
            Ast::Group(g) => {
                if let ast::GroupKind::NonCapturing(f) = &g.kind {
                    flags(f)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        match item {
            ast::ClassSetItem::Bracketed(_) => {
                Err("nests a character class, which RE2 lacks".into())
            }
            ast::ClassSetItem::Literal(l) => literal(l),
            ast::ClassSetItem::Range(r) => literal(&r.start).and_then(|()| literal(&r.end)),
            ast::ClassSetItem::Unicode(c) => unicode_class(c),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("uses a class operation (&&, -- or ~~), which RE2 lacks".into())
    }
}

/// A literal RE2 reads: `\u` escapes are not RE2's, and Envoy's RE2 reads
/// Latin-1, where no code point passes `\x{FF}`.
fn literal(l: &ast::Literal) -> Result<(), String> {
    use ast::{HexLiteralKind as H, LiteralKind as K};
    match l.kind {
        K::HexFixed(H::UnicodeShort | H::UnicodeLong)
        | K::HexBrace(H::UnicodeShort | H::UnicodeLong) => {
            Err("uses a \\u escape, which RE2 lacks; write \\x{..}".into())
        }
        K::HexFixed(H::X) | K::HexBrace(H::X) if u32::from(l.c) > 0xFF => Err(format!(
            "escapes U+{:04X}; Envoy's RE2 reads Latin-1 and refuses escapes past \\x{{FF}}",
            u32::from(l.c)
        )),
        _ => Ok(()),
    }
}

/// A `\p` class RE2 knows: a general category, a script (exact names) or `Any`.
fn unicode_class(c: &ast::ClassUnicode) -> Result<(), String> {
    use ast::ClassUnicodeKind as K;
    let known = |name: &str| {
        name == "Any"
            || super::re2_names::GENERAL_CATEGORIES.contains(&name)
            || super::re2_names::SCRIPTS.contains(&name)
    };
    match &c.kind {
        K::OneLetter(letter) if known(&letter.to_string()) => Ok(()),
        K::Named(name) if known(name) => Ok(()),
        K::OneLetter(letter) => Err(format!("uses \\p{letter}, a class RE2 lacks")),
        K::Named(name) => Err(format!(
            "uses \\p{{{name}}}, a class RE2 lacks: RE2 has general categories (L, Lu, Nd, ...), \
             scripts by their exact names (Greek, Latin, Han, ...) and Any"
        )),
        K::NamedValue { .. } => Err("uses \\p{key=value}, which RE2 lacks".into()),
    }
}

fn flags(f: &ast::Flags) -> Result<(), String> {
    for item in &f.items {
        if let ast::FlagsItemKind::Flag(flag) = &item.kind
            && matches!(
                flag,
                ast::Flag::IgnoreWhitespace | ast::Flag::CRLF | ast::Flag::Unicode
            )
        {
            return Err(format!(
                "uses the flag {flag:?}, which RE2 lacks; RE2 has i, m, s and U"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn re2_patterns_pass_and_the_rest_say_why() {
        for good in [
            "^/api/v[0-9]+/users/[a-z0-9-]+$",
            "(?i)^/docs",
            "/(foo|bar)/.*",
            "\\d{1,20}",
            "[[:alpha:]]+",
            "\\pL+",
            "\\p{Greek}\\P{Lu}\\p{Kawi}\\p{Any}[\\p{Nd}\\pZ]",
            "\\x{FF}[\\x{0}-\\xff]",
            "(?:a*)*",
            "(?P<n>a)(?<m>b)",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("(", "not a valid regular expression"),
            ("[a-z&&[^m]]", "RE2 lacks"),
            ("[a[bc]]", "RE2 lacks"),
            ("(?x) a", "RE2 lacks"),
            ("\\<word", "RE2 lacks"),
            ("a{21}", "at most 20"),
            ("a{1,500}", "at most 20"),
            ("((((a{20}){20}){20}){20})", "too complex"),
            ("", "must not be empty"),
            ("\\p{NoSuchClass}", "a class RE2 lacks"),
            ("\\p{Lowercase}", "a class RE2 lacks"),
            ("\\p{Emoji}", "a class RE2 lacks"),
            ("\\p{greek}", "a class RE2 lacks"),
            ("\\p{Grek}", "a class RE2 lacks"),
            ("\\p{Garay}", "a class RE2 lacks"),
            ("[\\p{Letter}]", "a class RE2 lacks"),
            ("\\p{sc=Greek}", "key=value"),
            ("\\u0041", "\\u escape"),
            ("[\\u0041-\\u0042]", "\\u escape"),
            ("\\x{100}", "past \\x{FF}"),
            ("[\\x{0}-\\x{10FFFF}]", "past \\x{FF}"),
            ("a**", "repeats a repetition"),
            ("x{2}{3}", "repeats a repetition"),
            ("a+?+", "repeats a repetition"),
        ] {
            let got = check(bad).expect_err(bad);
            assert!(got.contains(why), "{bad}: {got}");
        }
        assert!(
            check(&"a".repeat(257))
                .expect_err("long")
                .contains("at most 256")
        );
    }
}
