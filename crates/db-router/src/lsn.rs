//! [`Lsn`]: a position in PostgreSQL's write-ahead log, the read-your-writes token.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A WAL position (`pg_lsn`), written `X/Y` in hex like PostgreSQL does.
///
/// The primary's LSN after a commit is a read-your-writes token: a replica whose replay
/// LSN is at least the token has applied that commit. LSNs keep growing across a
/// failover (the new timeline starts where the old one was cut), so tokens stay
/// comparable.
///
/// ```
/// use herd_db_router::Lsn;
///
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn.as_u64(), 0x16_B374_D848);
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// assert!("nonsense".parse::<Lsn>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// The zero position (`0/0`): "no requirement".
    pub const ZERO: Lsn = Lsn(0);

    /// From the 64-bit integer form.
    pub const fn new(value: u64) -> Self {
        Lsn(value)
    }

    /// The 64-bit integer form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Bytes of WAL from `earlier` to `self` (0 when `earlier` is not earlier).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

/// The integer form, as token stores that know nothing of PostgreSQL keep it
/// (herd-context's `TokenSlot`, herd-session's session).
impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::Parse {
            what: "LSN",
            value: s.chars().take(40).collect(),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(invalid)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(invalid());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| invalid())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for text in ["0/0", "0/3000060", "FFFFFFFF/FFFFFFFF", "1/0"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert_eq!("0/3000060".parse::<Lsn>().unwrap(), Lsn::new(0x300_0060));
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "1 / 2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bytes_since_saturates() {
        assert_eq!(Lsn::new(10).bytes_since(Lsn::new(4)), 6);
        assert_eq!(Lsn::new(4).bytes_since(Lsn::new(10)), 0);
    }
}
