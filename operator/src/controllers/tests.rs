use super::*;
use crate::naming;

#[test]
fn restore_role_names_pass_the_allowlist() {
    let name = restore_role_name("0B8F9A5C-3c1e-4c55-9b7d-2f6f1d5c9e11").unwrap();
    assert_eq!(
        name,
        "edumind_school_restore_0b8f9a5c3c1e4c559b7d2f6f1d5c9e11"
    );
    assert!(naming::quote_ident(&name).is_ok());
    assert!(restore_role_name("").is_err());
    assert!(restore_role_name("x\"; DROP ROLE postgres; --").is_err());
}
