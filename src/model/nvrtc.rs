//! esmfuzz's own CUDA kernels: each `.cu` program compiled once per process and device with
//! NVRTC (for the device's architecture, against the CUDA headers cubecl itself compiles
//! with), its kernels looked up by name once, and launched on cubecl's stream.
//!
//! The programs: [`FLASH`] (varlen flash attention, [`super::flash`]), [`LAYER_NORM`]
//! ([`super::cuda_norm`]), [`BIAS_GELU`] ([`super::cuda_gelu`]) and [`RESIDUE_MEAN`]
//! ([`super::cuda_pool`]). Each includes
//! `storage_types.cuh` (the storage types' conversions and vector access), handed to NVRTC
//! in memory ([`HEADERS`]).

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaContext, result as driver, sys as dsys};
use cudarc::nvrtc::result as nvrtc;
use cudarc::nvrtc::sys as nvrtc_sys;

/// One CUDA source file of esmfuzz's kernels.
#[derive(Debug)]
pub struct Program {
    /// The file name, for errors.
    pub file: &'static str,
    pub source: &'static str,
}

/// `flash_attention.cu`: `esm_rope_qk_*`, `esm_rope_kv_*` and `esm_flash_*`.
pub static FLASH: Program = Program {
    file: "flash_attention.cu",
    source: include_str!("flash_attention.cu"),
};

/// `layer_norm.cu`: `esm_layer_norm_*`.
pub static LAYER_NORM: Program = Program {
    file: "layer_norm.cu",
    source: include_str!("layer_norm.cu"),
};

/// `bias_gelu.cu`: `esm_bias_gelu_*`.
pub static BIAS_GELU: Program = Program {
    file: "bias_gelu.cu",
    source: include_str!("bias_gelu.cu"),
};

/// `residue_mean.cu`: `esm_residue_mean_*`.
pub static RESIDUE_MEAN: Program = Program {
    file: "residue_mean.cu",
    source: include_str!("residue_mean.cu"),
};

/// The headers the programs include, by the name they include them under.
pub static HEADERS: [(&str, &str); 1] = [("storage_types.cuh", include_str!("storage_types.cuh"))];

/// A loaded kernel.
#[derive(Clone, Copy)]
pub struct Function(dsys::CUfunction);
// SAFETY: a CUfunction is a handle valid in its context from any thread.
unsafe impl Send for Function {}

/// Kernel `name` of `program` on device `ordinal`, the program compiled on first use.
pub fn function(ordinal: usize, program: &'static Program, name: &str) -> Result<Function, String> {
    type Key = (usize, &'static str);
    static MODULES: OnceLock<Mutex<HashMap<Key, Result<usize, String>>>> = OnceLock::new();
    static FUNCTIONS: OnceLock<Mutex<HashMap<(Key, String), Function>>> = OnceLock::new();
    let key = (ordinal, program.file);
    let mut functions = FUNCTIONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(f) = functions.get(&(key, name.to_owned())) {
        return Ok(*f);
    }
    let context = CudaContext::new(ordinal).map_err(|e| format!("{e:?}"))?;
    context.bind_to_thread().map_err(|e| format!("{e:?}"))?;
    let module = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| compile(&context, program))
        .clone()?;
    let name_c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a module loaded in this context; a missing name is an error, not UB.
    let f = unsafe { driver::module::get_function(module as dsys::CUmodule, name_c) }
        .map_err(|e| format!("kernel {name} of {}: {e:?}", program.file))?;
    functions.insert((key, name.to_owned()), Function(f));
    Ok(Function(f))
}

/// Launches `f` on `stream` (cubecl's, as its resources hand it out).
///
/// # Safety
/// `params` point at values of the types, and in the order, of `f`'s signature; the buffers
/// they name stay allocated until the launch is enqueued (cubecl reuses them only behind it on
/// the same stream).
pub unsafe fn launch<Stream>(
    f: Function,
    grid: (u32, u32, u32),
    block: u32,
    stream: *mut Stream,
    params: &mut [*mut c_void],
) -> Result<(), String> {
    if stream.is_null() {
        return Err("cubecl did not hand out its stream (vendor/cubecl-cuda missing)".into());
    }
    // SAFETY: as the caller promises.
    unsafe {
        driver::launch_kernel(
            f.0,
            grid,
            (block, 1, 1),
            0,
            stream as dsys::CUstream,
            params,
        )
    }
    .map_err(|e| format!("{e:?}"))
}

/// Compiles `program` for the device's architecture and loads it; the module's handle as an
/// integer (it lives as long as the process).
fn compile(context: &CudaContext, program: &Program) -> Result<usize, String> {
    let (major, minor) = context.compute_capability().map_err(|e| format!("{e:?}"))?;
    let arch = if major >= 9 {
        format!("sm_{major}{minor}a")
    } else {
        format!("sm_{major}{minor}")
    };
    let ptx = ptx(program, &arch)?;
    // SAFETY: NUL-terminated PTX from NVRTC, loaded into the current (primary) context.
    let module = unsafe { driver::module::load_data(ptx.as_ptr().cast()) }
        .map_err(|e| format!("loading {}: {e:?}", program.file))?;
    Ok(module as usize)
}

/// `program` compiled by NVRTC for `arch` (such as `sm_90a`), with [`HEADERS`] and what
/// `ESMFUZZ_FLASH_MIN_BLOCKS` defines: its PTX, NUL-terminated. Needs NVRTC, not a device.
pub fn ptx(program: &Program, arch: &str) -> Result<Vec<std::ffi::c_char>, String> {
    let min_blocks = min_blocks_define(std::env::var("ESMFUZZ_FLASH_MIN_BLOCKS").ok().as_deref())?;
    ptx_with(program, arch, min_blocks.as_deref())
}

/// [`ptx`] with `define` (`-DNAME=VALUE`) in place of the environment's.
fn ptx_with(
    program: &Program,
    arch: &str,
    define: Option<&str>,
) -> Result<Vec<std::ffi::c_char>, String> {
    let arch = format!("--gpu-architecture={arch}");
    let include = format!(
        "--include-path={}",
        cubecl::cuda::install::include_path().display()
    );
    let mut options = vec![arch.as_str(), include.as_str(), "-std=c++17"];
    options.extend(define);
    let cstring = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let source = cstring(program.source)?;
    let file = cstring(program.file)?;
    let contents = HEADERS
        .iter()
        .map(|(_, text)| cstring(text))
        .collect::<Result<Vec<_>, _>>()?;
    let names = HEADERS
        .iter()
        .map(|(name, _)| cstring(name))
        .collect::<Result<Vec<_>, _>>()?;
    let contents: Vec<_> = contents.iter().map(|c| c.as_ptr()).collect();
    let names: Vec<_> = names.iter().map(|c| c.as_ptr()).collect();
    let mut handle = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is a live NUL-terminated string for the call, `contents` and
    // `names` of HEADERS.len() entries each; NVRTC copies what it keeps.
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            handle.as_mut_ptr(),
            source.as_ptr(),
            file.as_ptr(),
            HEADERS.len() as i32,
            contents.as_ptr(),
            names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| format!("{e:?}"))?;
    // SAFETY: initialised by the successful call above; destroyed once, when `created` drops.
    let created = CreatedProgram(unsafe { handle.assume_init() });
    let handle = created.0;
    // SAFETY: a program just created; the options are plain strings.
    if unsafe { nvrtc::compile_program(handle, &options) }.is_err() {
        // SAFETY: the live program above.
        let log = unsafe { nvrtc::get_program_log(handle) }
            .map(|l| l.iter().map(|&c| c as u8 as char).collect::<String>())
            .unwrap_or_default();
        return Err(format!("NVRTC could not compile {}: {log}", program.file));
    }
    // SAFETY: the live program above, compiled; the PTX is copied out.
    unsafe { nvrtc::get_ptx(handle) }.map_err(|e| format!("{e:?}"))
}

/// The definition `ESMFUZZ_FLASH_MIN_BLOCKS=N` (`value`) asks for: `FLASH_MIN_BLOCKS_HD64`,
/// the blocks a multiprocessor is to hold of the half types' flash kernels at head dim 64
/// (`flash_attention.cu`; 0 leaves their registers to ptxas). A launch bound only moves
/// registers, never values. Unset or empty: none, the program's own default.
fn min_blocks_define(value: Option<&str>) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n <= 8 => Ok(Some(format!("-DFLASH_MIN_BLOCKS_HD64={n}"))),
            _ => Err(format!(
                "ESMFUZZ_FLASH_MIN_BLOCKS={v}: expected a whole number of blocks from 0 to 8"
            )),
        },
    }
}

/// An NVRTC program, destroyed when dropped (on every path out of [`ptx`]).
struct CreatedProgram(nvrtc_sys::nvrtcProgram);

impl Drop for CreatedProgram {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here. A failure would only
        // leak the program, so it is ignored.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flash_block_bound_is_a_small_count_from_the_environment_or_nothing() {
        assert_eq!(min_blocks_define(None), Ok(None));
        assert_eq!(min_blocks_define(Some(" ")), Ok(None));
        for (value, define) in [("0", "=0"), ("4", "=4"), (" 3 ", "=3")] {
            assert_eq!(
                min_blocks_define(Some(value)),
                Ok(Some(format!("-DFLASH_MIN_BLOCKS_HD64{define}")))
            );
        }
        for bad in ["9", "-1", "four", "2.5"] {
            let e = min_blocks_define(Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!("ESMFUZZ_FLASH_MIN_BLOCKS={bad}")),
                "{e}"
            );
            assert!(e.contains("from 0 to 8"), "{e}");
        }
    }

    /// Needs NVRTC and CUDA's headers, not a GPU; compiling is what the GPU machine does first
    /// with each program. With the pip packages of `scripts/nvrtc_check.py`:
    /// `CUDA_PATH=<.../nvidia/cu13> LD_LIBRARY_PATH=<.../nvidia/cu13/lib> cargo test
    /// --features cuda --lib -- --ignored every_program`.
    #[test]
    #[ignore = "needs NVRTC and CUDA's headers (CUDA_PATH, LD_LIBRARY_PATH)"]
    fn every_program_compiles_with_the_shared_header() {
        for (program, kernel) in [
            (&FLASH, "esm_flash_f16_hd64"),
            (&FLASH, "esm_rope_qk_v8_bf16_hd32"),
            (&FLASH, "esm_rope_qk_v8_f16_hd16"),
            (&FLASH, "esm_rope_kv_v8_f16_hd64"),
            (&FLASH, "esm_flash_rq_bf16_hd16"),
            (&LAYER_NORM, "esm_residual_layer_norm_bf16_stored_v8"),
            (&BIAS_GELU, "esm_bias_gelu_f32_v4"),
            (&RESIDUE_MEAN, "esm_residue_mean_bf16"),
        ] {
            let ptx = ptx(program, "sm_90a").unwrap_or_else(|e| panic!("{e}"));
            let text: String = ptx.iter().map(|&c| c as u8 as char).collect();
            assert!(
                text.contains(&format!(".entry {kernel}(")),
                "{}: no kernel {kernel} in {} bytes of PTX",
                program.file,
                ptx.len()
            );
        }
        // No kernel carries a block bound by default; under FLASH_MIN_BLOCKS_HD64=4
        // (ESMFUZZ_FLASH_MIN_BLOCKS=4) exactly the half types' head-dim-64 flash kernels do.
        let flash_ptx = |define| -> String {
            ptx_with(&FLASH, "sm_90a", define)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|&c| c as u8 as char)
                .collect()
        };
        let text = flash_ptx(None);
        assert_eq!(
            text.matches(".minnctapersm").count(),
            0,
            "a block bound by default"
        );
        let text = flash_ptx(Some("-DFLASH_MIN_BLOCKS_HD64=4"));
        let bounded: Vec<&str> = text
            .split(".entry ")
            .skip(1)
            .filter(|body| body.contains(".minnctapersm 4"))
            .map(|body| body.split('(').next().unwrap_or(""))
            .collect();
        assert_eq!(
            bounded,
            [
                "esm_flash_f16_hd64",
                "esm_flash_bf16_hd64",
                "esm_flash_rq_f16_hd64",
                "esm_flash_rq_bf16_hd64"
            ],
            "kernels with .minnctapersm 4 with FLASH_MIN_BLOCKS_HD64=4"
        );
        assert_eq!(text.matches(".minnctapersm").count(), 4);
    }
}
