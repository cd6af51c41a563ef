//! Client shares (SPEC §5): each listed client is guaranteed `share * amount` of every
//! provider-scope calendar limit; clients not listed share the unallocated remainder as
//! one group.
//!
//! Without `borrow` a group never exceeds its share. With `borrow` a group may also use
//! what no other listed client's *unused* guarantee holds: a call fits when
//! `own_used + cost <= own_share`, or when
//! `total + cost + Σ_{other listed g} max(0, share_g * amount - used_g) <= amount`.
//! The unallocated remainder is nobody's guarantee: clients not listed may use it (without
//! `borrow`, at most `remainder * amount` of it), and listed borrowers may use it too.
//! Every admission keeps `total + Σ_listed unused guarantees <= amount`, so a listed
//! client can always use the rest of its guarantee (barring settles above the estimate).
//! Consequence: when the listed shares sum to 1 there is nothing to borrow.

use crate::quota::clock::Micros;
use crate::quota::fit::{fits, non_negative};
use crate::quota::spec::ClientShares;

/// The validated share table of one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareTable {
    names: Vec<Box<str>>,
    /// One fraction per listed client, then the remainder for everyone else.
    fractions: Vec<f64>,
    borrow: bool,
}

/// What the share rule says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareFit {
    /// Within the group's guarantee or borrowable capacity.
    Ok,
    /// Not in this period; it may fit after the reset.
    Later,
    /// Never: larger than anything this group could ever get.
    Never,
}

/// Per-group usage of one limit in one calendar period.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareBook {
    /// The calendar period this usage belongs to.
    pub period: Micros,
    /// Used per group (same order as the table's groups).
    pub used: Vec<f64>,
}

impl ShareTable {
    /// Builds the table; negative shares read as 0 and shares summing above 1 are scaled
    /// down to sum to 1.
    pub fn new(spec: &ClientShares) -> Self {
        let mut fractions: Vec<f64> = spec.shares.iter().map(|(_, f)| non_negative(*f)).collect();
        let sum: f64 = fractions.iter().sum();
        if sum > 1.0 {
            fractions.iter_mut().for_each(|f| *f /= sum);
        }
        let listed: f64 = fractions.iter().sum();
        fractions.push((1.0 - listed).max(0.0));
        Self {
            names: spec.shares.iter().map(|(n, _)| n.as_str().into()).collect(),
            fractions,
            borrow: spec.borrow,
        }
    }

    /// Whether a group may use what no other listed client's unused guarantee holds.
    pub fn borrow(&self) -> bool {
        self.borrow
    }

    /// Number of groups (listed clients plus the "everyone else" group).
    pub fn groups(&self) -> usize {
        self.fractions.len()
    }

    /// The group of `client` (the last group when it is not listed).
    #[inline]
    pub fn group_of(&self, client: &str) -> usize {
        self.names
            .iter()
            .position(|n| &**n == client)
            .unwrap_or(self.names.len())
    }

    /// The group's name (`None` for "everyone else").
    pub fn name(&self, group: usize) -> Option<&str> {
        self.names.get(group).map(|n| &**n)
    }

    /// The group's guaranteed fraction.
    pub fn fraction(&self, group: usize) -> f64 {
        self.fractions.get(group).copied().unwrap_or(0.0)
    }

    /// An empty book for `period`.
    pub fn book(&self, period: Micros) -> ShareBook {
        ShareBook {
            period,
            used: vec![0.0; self.groups()],
        }
    }

    /// The most a group can get in an empty period.
    pub fn max_for(&self, group: usize, amount: f64) -> f64 {
        let own = self.fraction(group);
        if !self.borrow {
            return own * amount;
        }
        let others: f64 = (0..self.names.len())
            .filter(|&g| g != group)
            .map(|g| self.fractions[g])
            .sum();
        own.max(1.0 - others) * amount
    }

    /// Applies the share rule to `cost` for `group`, given the limit's `total` usage.
    pub fn check(
        &self,
        book: &ShareBook,
        group: usize,
        total: f64,
        cost: f64,
        amount: f64,
    ) -> ShareFit {
        let own_used = book.used.get(group).copied().unwrap_or(0.0);
        let within_own = fits(own_used, cost, self.fraction(group) * amount);
        let listed = group < self.names.len();
        let ok = if listed && within_own {
            true
        } else if listed && !self.borrow {
            false
        } else {
            // Borrowing (or the unlisted group): never eat another listed client's
            // unused guarantee.
            (self.borrow || within_own)
                && fits(total + self.locked(book, group, amount), cost, amount)
        };
        if ok {
            ShareFit::Ok
        } else if fits(0.0, cost, self.max_for(group, amount)) {
            ShareFit::Later
        } else {
            ShareFit::Never
        }
    }

    /// Σ over listed clients other than `group` of their unused guarantee.
    fn locked(&self, book: &ShareBook, group: usize, amount: f64) -> f64 {
        (0..self.names.len())
            .filter(|&g| g != group)
            .map(|g| {
                (self.fractions[g] * amount - book.used.get(g).copied().unwrap_or(0.0)).max(0.0)
            })
            .sum()
    }

    /// Carries usage over from a book kept under `old` (groups matched by name).
    pub fn migrate(&self, old: &ShareTable, book: &ShareBook) -> ShareBook {
        let mut new = self.book(book.period);
        for (g, used) in new.used.iter_mut().enumerate() {
            let old_group = match self.name(g) {
                Some(name) => old.names.iter().position(|n| &**n == name),
                None => Some(old.names.len()),
            };
            *used = old_group
                .and_then(|o| book.used.get(o))
                .copied()
                .unwrap_or(0.0);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(borrow: bool) -> ShareTable {
        ShareTable::new(&ClientShares {
            shares: vec![("europe".into(), 0.4), ("americas".into(), 0.35)],
            borrow,
        })
    }

    #[test]
    fn groups_and_remainder() {
        let t = table(false);
        assert_eq!(t.groups(), 3);
        assert_eq!(t.group_of("americas"), 1);
        assert_eq!(t.group_of("apac"), 2);
        assert!((t.fraction(2) - 0.25).abs() < 1e-12);
        let over = ShareTable::new(&ClientShares {
            shares: vec![("a".into(), 1.5), ("b".into(), 0.5), ("c".into(), -1.0)],
            borrow: false,
        });
        assert_eq!(over.fraction(0), 0.75);
        assert_eq!(over.fraction(2), 0.0);
        assert_eq!(over.fraction(3), 0.0);
    }

    #[test]
    fn check_table() {
        let (strict, lend) = (table(false), table(true));
        let amount = 100.0;
        let mut book = strict.book(0);
        book.used = vec![40.0, 0.0, 0.0];
        // europe at its share: strict says later; borrowing may use the remainder (25)
        // since americas' 35 stay locked.
        assert_eq!(strict.check(&book, 0, 40.0, 1.0, amount), ShareFit::Later);
        assert_eq!(lend.check(&book, 0, 40.0, 25.0, amount), ShareFit::Ok);
        assert_eq!(lend.check(&book, 0, 40.0, 26.0, amount), ShareFit::Later);
        // everyone else: 25 of their own, and the same when borrowing from nobody.
        assert_eq!(strict.check(&book, 2, 40.0, 25.0, amount), ShareFit::Ok);
        assert_eq!(strict.check(&book, 2, 40.0, 26.0, amount), ShareFit::Never);
        // Americas' guarantee holds even when the total is nearly spent by borrowers.
        book.used = vec![65.0, 0.0, 0.0];
        assert_eq!(lend.check(&book, 1, 65.0, 35.0, amount), ShareFit::Ok);
        assert_eq!(lend.check(&book, 2, 65.0, 1.0, amount), ShareFit::Later);
        // Largest possible: strict = own share; borrow = 1 - other listed shares.
        assert_eq!(strict.max_for(0, amount), 40.0);
        assert!((lend.max_for(0, amount) - 65.0).abs() < 1e-9);
        assert_eq!(lend.check(&book, 0, 0.0, 66.0, amount), ShareFit::Never);
    }

    #[test]
    fn migrate_by_name() {
        let old = table(true);
        let mut book = old.book(7);
        book.used = vec![1.0, 2.0, 3.0];
        let new = ShareTable::new(&ClientShares {
            shares: vec![("americas".into(), 0.5), ("apac".into(), 0.2)],
            borrow: true,
        });
        let moved = new.migrate(&old, &book);
        assert_eq!(moved.period, 7);
        assert_eq!(moved.used, vec![2.0, 0.0, 3.0]);
    }
}
