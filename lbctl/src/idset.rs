//! A set of small dense ids (frontend or backend ids, which the writer allocates from 1
//! upwards): a bit each, where a `Vec<u32>` of them takes 32 and a hash set more.

/// A set of ids, a bit each up to the highest one inserted.
#[derive(Debug, Default)]
pub(crate) struct IdSet(Vec<u64>);

impl IdSet {
    /// Adds `id`; `false` if it was there.
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    /// The ids, in ascending order: a step per id and per word of 64 ids.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    w as u32 * 64 + bit
                })
            })
        })
    }
}

impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(ids: I) -> Self {
        let mut set = IdSet::default();
        for id in ids {
            set.insert(id);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::IdSet;

    #[test]
    fn ids_go_in_once_and_come_out_in_order() {
        let mut set: IdSet = [130, 1, 64, 63].into_iter().collect();
        assert!(!set.insert(64), "already there");
        assert!(set.insert(0));
        assert!(set.contains(130) && set.contains(0) && !set.contains(2));
        assert!(!set.contains(100_000), "beyond the highest id");
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 1, 63, 64, 130]);
        let all: IdSet = (0..200).collect();
        assert_eq!(all.iter().collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
        assert_eq!(IdSet::default().iter().count(), 0);
    }
}
