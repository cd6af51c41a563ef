//! Configuration (SPEC §4): the TOML file is parsed by serde into `raw` types that deny unknown
//! keys, then validated into `model` types that cannot be invalid. Every error carries
//! `file:line:col`. `${VAR}` is expanded in strings. Reloads build a whole new [`Config`] and
//! swap it in only when it is valid.

mod describe;
mod load;
mod model;
pub(crate) mod net;
pub mod presets;
mod raw;
pub(crate) mod validate;
mod values;

pub use describe::describe;
pub use load::{line_col, load, parse, ConfigError};
pub use model::*;
pub use values::{format_duration, parse_duration};

/// Where `run` and `check` look for the config when `-c` is not given.
pub const DEFAULT_PATH: &str = "config/quota-proxy.toml";
/// The environment variable naming the config file.
pub const PATH_ENV: &str = "QUOTA_PROXY_CONFIG";
