//! Built-in provider presets: hosts, route, upstream, key injection and signal families for
//! well-known APIs. Anything a provider sets itself wins over its preset.

/// What a preset contributes.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub hosts: &'static [&'static str],
    pub route: &'static str,
    pub upstream: &'static str,
    pub inject: PresetInject,
    pub signals: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
pub enum PresetInject {
    Header(&'static str, &'static str),
    Query(&'static str),
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai",
        hosts: &["api.openai.com"],
        route: "/openai",
        upstream: "https://api.openai.com",
        inject: PresetInject::Header("authorization", "Bearer {key}"),
        signals: &["openai"],
    },
    Preset {
        name: "anthropic",
        hosts: &["api.anthropic.com"],
        route: "/anthropic",
        upstream: "https://api.anthropic.com",
        inject: PresetInject::Header("x-api-key", "{key}"),
        signals: &["anthropic"],
    },
    Preset {
        name: "gemini",
        hosts: &["generativelanguage.googleapis.com"],
        route: "/gemini",
        upstream: "https://generativelanguage.googleapis.com",
        inject: PresetInject::Header("x-goog-api-key", "{key}"),
        signals: &["gemini"],
    },
    Preset {
        name: "tavily",
        hosts: &["api.tavily.com"],
        route: "/tavily",
        upstream: "https://api.tavily.com",
        inject: PresetInject::Header("authorization", "Bearer {key}"),
        signals: &[],
    },
    Preset {
        name: "keepa",
        hosts: &["api.keepa.com"],
        route: "/keepa",
        upstream: "https://api.keepa.com",
        inject: PresetInject::Query("key"),
        signals: &["keepa"],
    },
    Preset {
        name: "odds_api",
        hosts: &["api.the-odds-api.com"],
        route: "/odds",
        upstream: "https://api.the-odds-api.com",
        inject: PresetInject::Query("apiKey"),
        signals: &["odds_api"],
    },
    Preset {
        name: "brave",
        hosts: &["api.search.brave.com"],
        route: "/brave",
        upstream: "https://api.search.brave.com",
        inject: PresetInject::Header("x-subscription-token", "{key}"),
        signals: &["ietf"],
    },
    Preset {
        name: "github",
        hosts: &["api.github.com"],
        route: "/github",
        upstream: "https://api.github.com",
        inject: PresetInject::Header("authorization", "Bearer {key}"),
        signals: &["github"],
    },
];

/// Signal families the proxy understands.
pub const SIGNAL_FAMILIES: &[&str] = &[
    "openai",
    "anthropic",
    "gemini",
    "ietf",
    "github",
    "odds_api",
    "keepa",
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}
