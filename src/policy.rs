//! Password policy, checked when a TransferUser's password Secret is read: length, character
//! classes, not the username, not a common password. Messages never contain the password.

use crate::crd::PasswordPolicy;

/// Passwords seen most often in breach corpora (lower-cased), plus ones people pick to pass
/// length rules. Compared case-insensitively, also with trailing digits/symbols removed.
const COMMON: &[&str] = &[
    "123456",
    "password",
    "12345678",
    "qwerty",
    "123456789",
    "12345",
    "1234",
    "111111",
    "1234567",
    "dragon",
    "123123",
    "baseball",
    "abc123",
    "football",
    "monkey",
    "letmein",
    "696969",
    "shadow",
    "master",
    "666666",
    "qwertyuiop",
    "123321",
    "mustang",
    "1234567890",
    "michael",
    "654321",
    "superman",
    "1qaz2wsx",
    "7777777",
    "121212",
    "000000",
    "qazwsx",
    "123qwe",
    "killer",
    "trustno1",
    "jordan",
    "jennifer",
    "zxcvbnm",
    "asdfgh",
    "hunter",
    "buster",
    "soccer",
    "harley",
    "batman",
    "andrew",
    "tigger",
    "sunshine",
    "iloveyou",
    "2000",
    "charlie",
    "robert",
    "thomas",
    "hockey",
    "ranger",
    "daniel",
    "starwars",
    "klaster",
    "112233",
    "george",
    "computer",
    "michelle",
    "jessica",
    "pepper",
    "1111",
    "zxcvbn",
    "555555",
    "11111111",
    "131313",
    "freedom",
    "777777",
    "pass",
    "maggie",
    "159753",
    "aaaaaa",
    "ginger",
    "princess",
    "joshua",
    "cheese",
    "amanda",
    "summer",
    "love",
    "ashley",
    "nicole",
    "chelsea",
    "biteme",
    "matthew",
    "access",
    "yankees",
    "987654321",
    "dallas",
    "austin",
    "thunder",
    "taylor",
    "matrix",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "password1",
    "password123",
    "welcome",
    "welcome1",
    "welcome123",
    "admin",
    "admin123",
    "administrator",
    "changeme",
    "changeit",
    "secret",
    "letmein123",
    "qwerty123",
    "iloveyou1",
    "correcthorsebatterystaple",
    "winter",
    "spring",
    "autumn",
    "company",
    "abcdefghijkl",
    "qwertyuiopas",
    "sftpuser",
    "ftpuser",
    "transfer",
    "partner",
];

/// Why a password was refused (each names the rule, never the password).
pub fn violations(password: &str, username: &str, policy: &PasswordPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    let length = password.chars().count();
    let min_length = usize::try_from(policy.min_length).unwrap_or(12);
    if length < min_length {
        problems.push(format!(
            "must be at least {min_length} characters (has {length})"
        ));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|present| **present)
    .count();
    let min_classes = usize::try_from(policy.min_character_classes).unwrap_or(3);
    if classes < min_classes {
        problems.push(format!(
            "must mix at least {min_classes} of lower case, upper case, digits and symbols (has {classes})"
        ));
    }
    let lower = password.to_lowercase();
    let stem = lower.trim_end_matches(|c: char| c.is_ascii_digit() || !c.is_alphanumeric());
    // The whole password (or its stem before trailing digits and symbols) against the whole
    // username, never a substring test: whoever may create TransferUsers chooses the username,
    // and "a", "ab", ... would otherwise read a marked Secret out one character at a time.
    let name = username.to_lowercase();
    if !name.is_empty() && (lower == name || stem == name) {
        problems.push("must not be the username".to_string());
    }
    if COMMON.contains(&lower.as_str()) || COMMON.contains(&stem) {
        problems.push("is a commonly used password".to_string());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(password: &str) -> Vec<String> {
        violations(password, "alice", &PasswordPolicy::default())
    }

    #[test]
    fn strong_password_passes() {
        assert!(check("Tr4nsfer-Orbit-Kettle").is_empty());
    }

    #[test]
    fn each_rule_is_reported_without_the_password() {
        let short = check("Ab1!");
        assert!(short.iter().any(|p| p.contains("at least 12")));
        assert!(short.iter().all(|p| !p.contains("Ab1!")));
        assert!(
            check("alllowercaseletters")
                .iter()
                .any(|p| p.contains("mix"))
        );
        assert!(check("Alice2026!!").iter().any(|p| p.contains("username")));
        assert!(check("Password123!").iter().any(|p| p.contains("commonly")));
        assert!(check("Welcome123!!").iter().any(|p| p.contains("commonly")));
    }

    #[test]
    fn the_username_rule_is_no_substring_oracle() {
        let password = "Orbit-Kettle-2026";
        for probe in ["o", "or", "orb", "orbit", "kettle", "orbit-k"] {
            assert!(
                !violations(password, probe, &PasswordPolicy::default())
                    .iter()
                    .any(|p| p.contains("username")),
                "{probe}"
            );
        }
        assert!(
            violations("orbit-kettle", "Orbit-Kettle", &PasswordPolicy::default())
                .iter()
                .any(|p| p.contains("username"))
        );
    }

    #[test]
    fn policy_is_configurable() {
        let relaxed = PasswordPolicy {
            min_length: 8,
            min_character_classes: 1,
            ..PasswordPolicy::default()
        };
        assert!(violations("lowercase", "bob", &relaxed).is_empty());
    }
}
