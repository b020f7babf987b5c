//! Plain enums with a fixed set of names (policies, backends, strata): one way to print and
//! parse them, so the command line (which maps them through clap) and reports agree.

/// An enum whose every value has one name.
pub trait Named: Copy + 'static {
    /// Every value, in the order help texts list them.
    const VALUES: &'static [Self];
    /// What a value is, for error messages ("precision", "backend").
    const WHAT: &'static str;
    /// The value's name on the command line and in reports.
    fn name(self) -> &'static str;
}

/// The value named `s`, or an error listing the names.
pub fn parse_named<T: Named>(s: &str) -> Result<T, String> {
    T::VALUES
        .iter()
        .copied()
        .find(|v| v.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = T::VALUES.iter().map(|v| v.name()).collect();
            format!(
                "unknown {} '{s}' (expected one of {})",
                T::WHAT,
                names.join(", ")
            )
        })
}

/// `Display` and `FromStr` for a [`Named`] type.
#[macro_export]
macro_rules! impl_named {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::named::Named::name(*self))
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::named::parse_named(s)
            }
        }
    };
}
