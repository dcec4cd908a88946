//! Port conditions: a set of inclusive ranges, and its expansion into prefix-aligned
//! (value, mask) pairs that an exact-match hash lookup can test.
use std::fmt;

/// An inclusive port range; a single port is `lo == hi`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        (lo <= hi).then_some(Self { lo, hi })
    }

    pub fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// The smallest set of aligned blocks covering exactly this range: each block is all
    /// ports `p` with `p & mask == value`. At most 30 blocks (2 per bit, less the ends).
    pub fn prefixes(&self) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut lo = u32::from(self.lo);
        let hi = u32::from(self.hi);
        while lo <= hi {
            let mut size = if lo == 0 {
                1 << 16
            } else {
                lo & lo.wrapping_neg()
            };
            while lo + size - 1 > hi {
                size >>= 1;
            }
            out.push((lo as u16, (0x1_0000 - size) as u16));
            lo += size;
        }
        out
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A non-empty union of port ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    /// `None` when `ranges` is empty.
    pub fn new(mut ranges: Vec<PortRange>) -> Option<Self> {
        if ranges.is_empty() {
            return None;
        }
        ranges.sort();
        ranges.dedup();
        Some(Self(ranges))
    }

    pub fn single(port: u16) -> Self {
        Self(vec![PortRange::single(port)])
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Aligned blocks of all ranges; overlapping ranges may yield duplicate blocks.
    pub fn prefixes(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = self.0.iter().flat_map(PortRange::prefixes).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(r: PortRange) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|&p| r.prefixes().iter().any(|&(v, m)| p & m == v))
            .collect()
    }

    #[test]
    fn prefixes_cover_exactly_the_range() {
        for (lo, hi) in [
            (0, 65535),
            (80, 80),
            (1024, 65535),
            (1, 65534),
            (1000, 1999),
            (0, 0),
        ] {
            let r = PortRange::new(lo, hi).unwrap();
            let want: Vec<u16> = (lo..=hi).collect();
            assert_eq!(covered(r), want, "{lo}-{hi}");
            assert!(r.prefixes().len() <= 30);
        }
    }

    #[test]
    fn full_range_is_one_wildcard_block() {
        assert_eq!(PortRange::new(0, 65535).unwrap().prefixes(), vec![(0, 0)]);
        assert_eq!(PortRange::single(443).prefixes(), vec![(443, 0xffff)]);
    }

    #[test]
    fn empty_range_and_set_are_rejected() {
        assert!(PortRange::new(10, 9).is_none());
        assert!(PortSet::new(vec![]).is_none());
    }
}
