//! `linux.seccomp` → a seccomp program, compiled by the shim (with
//! libseccomp, as runc, crun and youki do) and loaded by the runner just
//! before the guest starts.
//!
//! The translation is runc's, field by field: the default action and
//! `defaultErrnoRet`; each architecture added (the native one is always
//! there); one rule per syscall name, skipped when its action is the
//! default one or when libseccomp does not know the name (runc skips those
//! too); a rule's conditions ANDed in one rule, unless an argument index
//! repeats, when each becomes a rule of its own (an OR); `SCMP_CMP_MASKED_EQ`
//! with `value` as the mask and `valueTwo` as the datum; `errnoRet` for
//! ERRNO and TRACE, EPERM without it; flags `LOG` and `SPEC_ALLOW` passed to
//! the kernel, `SPEC_ALLOW` by default when the profile has no `flags`.
//!
//! Like runc's `patchbpf`, a stub in front of libseccomp's program makes
//! every syscall newer than the newest one the profile names (for each of
//! its architectures) fail with `ENOSYS` instead of the default action, so
//! that a guest's runtime probing a new syscall falls back as it would on
//! an older kernel. `SCMP_ACT_NOTIFY` needs a seccomp agent wasmpod does not
//! run: a profile that uses it is refused.
//!
//! Compiling RuntimeDefault takes about 12 ms; programs are cached by the
//! profile, in the shim and on the node ([`Programs`]), so a node pays it
//! once per profile.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use wasmpod_oci::plan::SeccompProgram;

/// `SECCOMP_FILTER_FLAG_*`.
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// Why a profile cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp: SCMP_ACT_NOTIFY needs a seccomp agent, which wasmpod does not run")]
    Notify,
    #[error("linux.seccomp: string {0} is not a valid arch for seccomp")]
    Arch(String),
    #[error("linux.seccomp: {what}: {source}")]
    Library {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("linux.seccomp: export the program: {0}")]
    Export(#[source] std::io::Error),
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Library { what, source }
}

/// The JSON name serde gives an enum value of the spec.
fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    let errno = errno
        .and_then(|e| i32::try_from(e).ok())
        .unwrap_or(libc::EPERM);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(u16::try_from(errno).unwrap_or(1)),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::Notify),
    })
}

fn operator(op: LinuxSeccompOperator, value_two: u64, value: u64) -> (ScmpCompareOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // runc: the mask is `value`, the datum `valueTwo`
        LinuxSeccompOperator::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two),
    }
}

/// The `AUDIT_ARCH_*` of an architecture, for the ENOSYS stub.
fn audit_arch(arch: ScmpArch) -> Option<u32> {
    Some(match arch {
        ScmpArch::X8664 | ScmpArch::X32 => 0xC000_003E,
        ScmpArch::X86 => 0x4000_0003,
        ScmpArch::Aarch64 => 0xC000_00B7,
        ScmpArch::Arm => 0x4000_0028,
        ScmpArch::Riscv64 => 0xC000_00F3,
        ScmpArch::Ppc64 => 0x8000_0015,
        ScmpArch::Ppc64Le => 0xC000_0015,
        ScmpArch::S390X => 0x8000_0016,
        _ => return None,
    })
}

/// Compiles `profile`.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("create the filter"))?;
    let mut arches = Vec::new();
    for a in profile.architectures().iter().flatten() {
        let n = name(a);
        if !wasmpod_oci::spec_check::SECCOMP_ARCHES.contains(&n.as_str()) {
            return Err(SeccompError::Arch(n));
        }
        let arch: ScmpArch = n.parse().map_err(|_| SeccompError::Arch(n.clone()))?;
        ctx.add_arch(arch)
            .map_err(lib(format!("add architecture {n}")))?;
        arches.push(arch);
    }
    let syscalls = profile.syscalls().as_deref().unwrap_or_default();
    if syscalls.len() > 32 {
        let _ = ctx.set_ctl_optimize(2);
    }
    let mut named: Vec<&str> = Vec::new();
    for rule in syscalls {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().as_deref().unwrap_or_default();
        let conditions: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                let (op, datum) = operator(a.op(), a.value_two().unwrap_or(0), a.value());
                ScmpArgCompare::new(u32::try_from(a.index()).unwrap_or(u32::MAX), op, datum)
            })
            .collect();
        let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indices.sort_unstable();
        let repeated = indices.windows(2).any(|w| w[0] == w[1]);
        for syscall in rule.names() {
            named.push(syscall);
            let Ok(nr) = ScmpSyscall::from_name(syscall) else {
                log::debug!("seccomp: unknown syscall {syscall:?} ignored");
                continue;
            };
            let what = || format!("rule for syscall {syscall}");
            if conditions.is_empty() {
                ctx.add_rule(act, nr).map_err(lib(what()))?;
            } else if repeated {
                for c in &conditions {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(c))
                        .map_err(lib(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, nr, &conditions)
                    .map_err(lib(what()))?;
            }
        }
    }
    let mut program = export(&ctx)?;
    if !matches!(
        default,
        ScmpAction::Allow | ScmpAction::Log | ScmpAction::Trace(_)
    ) {
        let stub = enosys_stub(&arches, &named);
        if !stub.is_empty() {
            let mut patched = stub;
            patched.extend_from_slice(&program);
            program = patched;
        }
    }
    let mut flags = FLAG_TSYNC;
    match profile.flags() {
        None => flags |= FLAG_SPEC_ALLOW,
        Some(list) => {
            for f in list {
                match name(f).as_str() {
                    "SECCOMP_FILTER_FLAG_LOG" => flags |= FLAG_LOG,
                    "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => flags |= FLAG_SPEC_ALLOW,
                    // every thread gets the filter anyway
                    _ => {}
                }
            }
        }
    }
    Ok(SeccompProgram { program, flags })
}

/// libseccomp's program, through an anonymous file (libseccomp 2.5 can
/// only export to a descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    let mut file = tempfile::tempfile().map_err(SeccompError::Export)?;
    ctx.export_bpf(&file).map_err(lib("export"))?;
    file.rewind().map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(SeccompError::Export)?;
    Ok(bytes)
}

/// One `sock_filter` instruction, native endian.
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..2].copy_from_slice(&code.to_ne_bytes());
    out[2] = jt;
    out[3] = jf;
    out[4..].copy_from_slice(&k.to_ne_bytes());
    out
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const RET_ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
const X32_BIT: u32 = 0x4000_0000;

/// A stub instruction with symbolic jump targets.
#[derive(Clone, Copy)]
enum Op {
    /// `ld [offset]` of `seccomp_data`.
    Load(u32),
    /// `jeq k` / `jgt k` / `jset k`: to `jt` when true, else the next one.
    Jump(u16, u32, Label),
    /// `ja` to a label.
    Always(Label),
    /// `ret ERRNO(ENOSYS)`.
    Enosys,
    /// A label's place (no instruction).
    Here(Label),
}

/// Labels of the stub; `End` is the first instruction of libseccomp's
/// program, which follows the stub.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Section(usize),
    X32(usize),
    Enosys(usize),
    End,
}

/// runc's ENOSYS stub: per architecture of the profile, syscall numbers
/// above the largest one the profile names return ENOSYS; everything else
/// (and every other architecture) goes on to libseccomp's program, which
/// follows the stub.
fn enosys_stub(arches: &[ScmpArch], names: &[&str]) -> Vec<u8> {
    // the largest number named, per audit arch: (native, x32)
    let mut max: BTreeMap<u32, (Option<u32>, Option<u32>)> = BTreeMap::new();
    for &arch in arches {
        let Some(audit) = audit_arch(arch) else {
            continue;
        };
        let largest = names
            .iter()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
            .map(i32::from)
            .filter_map(|nr| u32::try_from(nr).ok())
            .map(|nr| nr & !X32_BIT)
            .max();
        let Some(m) = largest else { continue };
        let e = max.entry(audit).or_default();
        let slot = if arch == ScmpArch::X32 {
            &mut e.1
        } else {
            &mut e.0
        };
        *slot = Some(slot.map_or(m, |old| old.max(m)));
    }
    if max.is_empty() {
        return Vec::new();
    }
    let mut ops = vec![Op::Load(4)];
    for (i, audit) in max.keys().enumerate() {
        ops.push(Op::Jump(JEQ_K, *audit, Label::Section(i)));
    }
    ops.push(Op::Always(Label::End));
    for (i, (native, x32)) in max.values().enumerate() {
        ops.push(Op::Here(Label::Section(i)));
        ops.push(Op::Load(0));
        if let Some(x) = x32 {
            ops.push(Op::Jump(JSET_K, X32_BIT, Label::X32(i)));
            if let Some(n) = native {
                ops.push(Op::Jump(JGT_K, *n, Label::Enosys(i)));
            }
            ops.push(Op::Always(Label::End));
            ops.push(Op::Here(Label::X32(i)));
            ops.push(Op::Jump(JGT_K, x | X32_BIT, Label::Enosys(i)));
        } else if let Some(n) = native {
            ops.push(Op::Jump(JGT_K, *n, Label::Enosys(i)));
        }
        ops.push(Op::Always(Label::End));
        ops.push(Op::Here(Label::Enosys(i)));
        ops.push(Op::Enosys);
    }
    ops.push(Op::Here(Label::End));
    assemble(&ops)
}

/// Lays the stub out: each label at the index of the instruction after it.
fn assemble(ops: &[Op]) -> Vec<u8> {
    let mut at = HashMap::new();
    let mut pos = 0usize;
    for op in ops {
        match op {
            Op::Here(l) => {
                at.insert(label_key(*l), pos);
            }
            _ => pos += 1,
        }
    }
    let offset = |from: usize, to: Label| at.get(&label_key(to)).map_or(0, |t| t - from - 1);
    let mut out = Vec::with_capacity(pos * 8);
    let mut pos = 0usize;
    for op in ops {
        let ins = match *op {
            Op::Here(_) => continue,
            Op::Load(off) => insn(LD_W_ABS, 0, 0, off),
            Op::Jump(code, k, to) => {
                insn(code, u8::try_from(offset(pos, to)).unwrap_or(u8::MAX), 0, k)
            }
            Op::Always(to) => insn(JA, 0, 0, u32::try_from(offset(pos, to)).unwrap_or(0)),
            Op::Enosys => insn(RET_K, 0, 0, RET_ENOSYS),
        };
        out.extend_from_slice(&ins);
        pos += 1;
    }
    out
}

fn label_key(l: Label) -> (u8, usize) {
    match l {
        Label::Section(i) => (0, i),
        Label::X32(i) => (1, i),
        Label::Enosys(i) => (2, i),
        Label::End => (3, 0),
    }
}

/// Compiled programs, by the profile: in this shim's memory, and on the
/// node in the module cache's directory (`<cache>/seccomp/<key>.bpf`), so
/// that a pod's first container does not pay the compile either (about
/// 12 ms for RuntimeDefault). The key hashes the profile's JSON with
/// libseccomp's version and this format's; each file holds its program's
/// sha256, checked on every read: a damaged file is compiled again and
/// replaced, never loaded. Whoever may write the directory is trusted, as
/// for the compiled Wasm in it.
#[derive(Default)]
pub struct Programs {
    memory: Mutex<HashMap<String, SeccompProgram>>,
    node: Option<PathBuf>,
}

/// Changes when the program for a profile would change (the ENOSYS stub,
/// the translation).
const FORMAT: &str = "wasmpod-seccomp-1";

impl Programs {
    /// Programs cached in this process only, and below `node_cache` when
    /// given.
    pub fn new(node_cache: Option<&Path>) -> Programs {
        Programs {
            memory: Mutex::default(),
            node: node_cache.map(|d| d.join("seccomp")),
        }
    }

    /// The program of `profile`, compiled once per node (or per shim,
    /// without a writable cache).
    pub fn get(&self, profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
        let json = serde_json::to_string(profile).unwrap_or_default();
        if let Some(p) = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&json)
        {
            return Ok(p.clone());
        }
        let file = self
            .node
            .as_ref()
            .map(|dir| dir.join(format!("{}.bpf", node_key(&json))));
        let cached = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| decode(&bytes));
        let program = match cached {
            Some(p) => p,
            None => {
                let p = compile(profile)?;
                if let (Some(dir), Some(file)) = (&self.node, &file) {
                    if let Err(e) = store(dir, file, &p) {
                        log::debug!("seccomp: cache {}: {e}", file.display());
                    }
                }
                p
            }
        };
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(json, program.clone());
        Ok(program)
    }
}

fn node_key(json: &str) -> String {
    let v = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let mut h = Sha256::new();
    for part in [FORMAT, v.as_str(), json] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// `sha256(flags ‖ program) ‖ flags (LE) ‖ program`.
fn encode(p: &SeccompProgram) -> Vec<u8> {
    let mut body = p.flags.to_le_bytes().to_vec();
    body.extend_from_slice(&p.program);
    let mut out = Sha256::digest(&body).to_vec();
    out.extend_from_slice(&body);
    out
}

fn decode(bytes: &[u8]) -> Option<SeccompProgram> {
    let (digest, body) = bytes.split_at_checked(32)?;
    if Sha256::digest(body).as_slice() != digest || body.len() < 4 + 8 {
        return None;
    }
    let (flags, program) = body.split_at(4);
    if !program.len().is_multiple_of(8) {
        return None;
    }
    Some(SeccompProgram {
        program: program.to_vec(),
        flags: u32::from_le_bytes(flags.try_into().ok()?),
    })
}

fn store(dir: &Path, file: &Path, p: &SeccompProgram) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".seccomp-")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, &encode(p))?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
