//! Naming the field of a `config.json` that the typed spec refuses.
//!
//! oci-spec parses enumerated fields (capability names, rlimit types,
//! seccomp actions, architectures, operators and flags) into enums, so an
//! unknown value fails the whole parse with serde's message, which names the
//! value but not where it is. [`explain`] reads the same bytes loosely and
//! says which field holds it, in the words runc uses for the same mistake,
//! so the error containerd and kubelet show points at the line to fix.

use serde_json::Value;

use crate::plan::security::{CAPABILITIES, RLIMITS};

/// The seccomp actions of the runtime spec.
pub const SECCOMP_ACTIONS: [&str; 9] = [
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

/// The seccomp architectures runc accepts.
pub const SECCOMP_ARCHES: [&str; 18] = [
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_LOONGARCH64",
];

/// The seccomp argument operators.
pub const SECCOMP_OPERATORS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// The seccomp filter flags.
pub const SECCOMP_FLAGS: [&str; 3] = [
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

/// The namespace types of the runtime spec.
const NAMESPACES: [&str; 8] = [
    "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
];

/// The first enumerated field of `spec` (a `config.json`'s bytes) whose
/// value is not one the spec allows, as `field: why`; `None` when they are
/// all known (or the bytes are not JSON at all).
pub fn explain(spec: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(spec).ok()?;
    let mut problems = Vec::new();
    if let Some(caps) = v.pointer("/process/capabilities") {
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            each_string(caps.get(set), |i, name| {
                if !CAPABILITIES.contains(&name) {
                    problems.push(format!(
                        "process.capabilities.{set}[{i}]: unknown capability {name:?}"
                    ));
                }
            });
        }
    }
    for (i, r) in array(v.pointer("/process/rlimits")).iter().enumerate() {
        if let Some(t) = r.get("type").and_then(Value::as_str) {
            if !RLIMITS.contains(&t) {
                problems.push(format!(
                    "process.rlimits[{i}].type: wrong rlimit value: {t}"
                ));
            }
        }
    }
    for (i, ns) in array(v.pointer("/linux/namespaces")).iter().enumerate() {
        if let Some(t) = ns.get("type").and_then(Value::as_str) {
            if !NAMESPACES.contains(&t) {
                problems.push(format!(
                    "linux.namespaces[{i}].type: unknown namespace type {t:?}"
                ));
            }
        }
    }
    if let Some(seccomp) = v.pointer("/linux/seccomp").filter(|s| !s.is_null()) {
        let action = |field: String, a: Option<&Value>, problems: &mut Vec<String>| {
            if let Some(a) = a.and_then(Value::as_str) {
                if !SECCOMP_ACTIONS.contains(&a) {
                    problems.push(format!(
                        "{field}: string {a} is not a valid action for seccomp"
                    ));
                }
            }
        };
        action(
            "linux.seccomp.defaultAction".into(),
            seccomp.get("defaultAction"),
            &mut problems,
        );
        each_string(seccomp.get("architectures"), |i, a| {
            if !SECCOMP_ARCHES.contains(&a) {
                problems.push(format!(
                    "linux.seccomp.architectures[{i}]: string {a} is not a valid arch for seccomp"
                ));
            }
        });
        each_string(seccomp.get("flags"), |i, f| {
            if !SECCOMP_FLAGS.contains(&f) {
                problems.push(format!(
                    "linux.seccomp.flags[{i}]: seccomp flag {f} is not known"
                ));
            }
        });
        for (i, rule) in array(seccomp.get("syscalls")).iter().enumerate() {
            action(
                format!("linux.seccomp.syscalls[{i}].action"),
                rule.get("action"),
                &mut problems,
            );
            for (j, arg) in array(rule.get("args")).iter().enumerate() {
                if let Some(op) = arg.get("op").and_then(Value::as_str) {
                    if !SECCOMP_OPERATORS.contains(&op) {
                        problems.push(format!(
                            "linux.seccomp.syscalls[{i}].args[{j}].op: string {op} is not a valid operator for seccomp"
                        ));
                    }
                }
            }
        }
    }
    problems.into_iter().next()
}

fn array(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn each_string(v: Option<&Value>, mut f: impl FnMut(usize, &str)) {
    for (i, item) in array(v).iter().enumerate() {
        if let Some(s) = item.as_str() {
            f(i, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn explained(v: Value) -> Option<String> {
        explain(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn names_the_field_of_an_unknown_value() {
        let ok = json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}]},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_X86_64"], "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}}});
        assert_eq!(explained(ok.clone()), None);
        let cases = [
            ("/process/capabilities/bounding/0", "CAP_FLY", "process.capabilities.bounding[0]: unknown capability \"CAP_FLY\""),
            ("/process/rlimits/0/type", "RLIMIT_WINGS", "process.rlimits[0].type: wrong rlimit value: RLIMIT_WINGS"),
            ("/linux/seccomp/defaultAction", "SCMP_ACT_MAYBE", "linux.seccomp.defaultAction: string SCMP_ACT_MAYBE is not a valid action for seccomp"),
            ("/linux/seccomp/architectures/0", "SCMP_ARCH_Z80", "linux.seccomp.architectures[0]: string SCMP_ARCH_Z80 is not a valid arch for seccomp"),
            ("/linux/seccomp/flags/0", "SECCOMP_FILTER_FLAG_FAST", "linux.seccomp.flags[0]: seccomp flag SECCOMP_FILTER_FLAG_FAST is not known"),
            ("/linux/seccomp/syscalls/0/action", "SCMP_ACT_NOPE", "linux.seccomp.syscalls[0].action: string SCMP_ACT_NOPE is not a valid action for seccomp"),
            ("/linux/seccomp/syscalls/0/args/0/op", "SCMP_CMP_ABOUT", "linux.seccomp.syscalls[0].args[0].op: string SCMP_CMP_ABOUT is not a valid operator for seccomp"),
        ];
        for (pointer, value, want) in cases {
            let mut v = ok.clone();
            *v.pointer_mut(pointer).unwrap() = json!(value);
            assert_eq!(explained(v).as_deref(), Some(want), "{pointer}");
        }
        assert_eq!(explain(b"not json"), None);
    }
}
