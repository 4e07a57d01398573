//! Which member owns a key: rendezvous (highest-random-weight) hashing.
//!
//! Every member scores `blake3(member address, 0, key)`; the highest score owns the key and the
//! next ones are its successors. Adding or losing a member moves only the keys it owned, and
//! every proxy computes the same order from the same member list without talking to the others.

use super::Member;

/// `members` in ownership order for `key`: the first owns it, the rest are its successors.
pub fn owners<'a>(members: &'a [Member], key: &[u8]) -> Vec<&'a Member> {
    let mut scored: Vec<(u64, &Member)> = members
        .iter()
        .map(|m| {
            let mut h = blake3::Hasher::new();
            h.update(m.addr.as_bytes());
            h.update(&[0]);
            h.update(key);
            let mut score = [0u8; 8];
            score.copy_from_slice(&h.finalize().as_bytes()[..8]);
            (u64::from_le_bytes(score), m)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(a: &str) -> Member {
        Member { addr: a.into() }
    }

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_a_lost_members_keys() {
        let all = vec![m("a:1"), m("b:1"), m("c:1")];
        let mut owned = std::collections::HashMap::new();
        for i in 0..3000 {
            let key = format!("k{i}");
            *owned.entry(owners(&all, key.as_bytes())[0].addr.clone()).or_insert(0) += 1;
        }
        assert!(owned.values().all(|&n| n > 800), "{owned:?}");
        let without_b = vec![m("a:1"), m("c:1")];
        for i in 0..3000 {
            let key = format!("k{i}");
            let before = owners(&all, key.as_bytes());
            let after = owners(&without_b, key.as_bytes());
            if before[0].addr != "b:1" {
                assert_eq!(before[0], after[0], "a key whose owner stayed does not move");
            } else {
                assert_eq!(before[1], after[0], "a lost owner's keys go to their next owner");
            }
        }
    }
}
