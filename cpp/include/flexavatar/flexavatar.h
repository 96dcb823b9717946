/* flexavatar C API: load an exported avatar bundle and render frames, without Python.
 *
 *   flexavatar_runtime_options options;
 *   flexavatar_runtime_options_init(&options, sizeof options);
 *   flexavatar_runtime* rt = NULL;
 *   if (flexavatar_runtime_create("bundle/", &options, &rt) != FLEXAVATAR_OK) {
 *     fprintf(stderr, "%s\n", flexavatar_last_error());
 *   }
 *   flexavatar_runtime_load_avatar_code(rt, "avatar_code.npy");   // or set_avatar_code(rt, floats, n)
 *   // or encode a photo: flexavatar_encoder_input in; flexavatar_encoder_input_init(&in, sizeof in);
 *   //   in.image = chw; in.image_count = 3 * S * S; flexavatar_runtime_create_avatar_code(rt, &in);
 *   flexavatar_camera camera;
 *   flexavatar_runtime_default_camera(rt, &camera);                 // or fill cam2world / intrinsics / size
 *   flexavatar_frame frame;
 *   flexavatar_runtime_render(rt, expression_135, 135, &camera, &frame);  // frame.rgba: [H, W, 4] uint8
 *   // the tracked head motion too: posed = camera; flexavatar_camera_apply_head_pose(&posed, expression_135, 135);
 *   flexavatar_runtime_destroy(rt);
 *
 * Rules of the interface (stable across minor versions; FLEXAVATAR_API_VERSION counts breaking changes):
 *  - Every fallible function returns a flexavatar_status; on failure the calling thread's last-error
 *    message (flexavatar_last_error) says which argument was wrong and what was expected. No C++
 *    exception ever crosses this interface.
 *  - Handles are opaque, created by *_create and released by *_destroy (NULL is accepted and ignored).
 *    A NULL handle, or one already destroyed, gives FLEXAVATAR_ERROR_INVALID_HANDLE, not a crash
 *    (handles are checked against a registry of live ones; a handle is an id, not an address, and is not
 *    reused, so a destroyed handle stays invalid after new runtimes are created). Destroying a runtime
 *    while another thread calls it is safe: destroy waits for a call in flight, and later calls get
 *    FLEXAVATAR_ERROR_INVALID_HANDLE.
 *  - Buffers returned in flexavatar_gaussians / flexavatar_frame / flexavatar_device_frame belong to the
 *    runtime and stay valid until the next decode/render call on it (a frame also until the next
 *    render_view), or its destruction. The runtime
 *    reuses them: after the first frame nothing is allocated per frame (the CUDA rasterizer's scratch
 *    comes from CUDA's stream-ordered pool, which keeps it).
 *  - One runtime is used by one thread at a time (calls on one runtime are serialised by a lock);
 *    different runtimes may be used from different threads.
 *  - Structs with a struct_size field carry their own size so that later versions can append fields: the
 *    library reads or fills only the fields that fit in the caller's struct_size. The *_init functions
 *    take the caller's sizeof and set struct_size to it: a program built against an older header passes
 *    its smaller size and nothing past it is written. Appending a field or a function is not an
 *    incompatible change.
 *
 * Conventions are those of the bundle's manifest (flexavatar/bundle.py): OpenCV camera axes, cam2world
 * 4x4 row-major, intrinsics normalised by the image size, quaternions wxyz, colour = SH degree-0,
 * expressions are the 135-d FLEX code, the avatar code is [R², D] float32 (the .npy file's (R², 1, D)).
 */
#ifndef FLEXAVATAR_FLEXAVATAR_H_
#define FLEXAVATAR_FLEXAVATAR_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(FLEXAVATAR_RUNTIME_BUILDING)
#define FLEXAVATAR_API __declspec(dllexport)
#else
#define FLEXAVATAR_API __declspec(dllimport)
#endif
#else
#define FLEXAVATAR_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Incremented on every incompatible change of this header.
 * 2: flexavatar_runtime_options_init / flexavatar_encoder_input_init take the caller's struct size and return a
 *    status (version 1 filled the library's sizeof, past the end of an older caller's struct). */
#define FLEXAVATAR_API_VERSION 2

typedef enum flexavatar_status {
  FLEXAVATAR_OK = 0,
  FLEXAVATAR_ERROR_NULL_POINTER = 1,     /* a required pointer argument is NULL */
  FLEXAVATAR_ERROR_INVALID_SIZE = 2,     /* a count or size is wrong (message: expected vs got) */
  FLEXAVATAR_ERROR_INVALID_ARGUMENT = 3, /* any other bad argument value */
  FLEXAVATAR_ERROR_UNAVAILABLE = 4,      /* a requested device / library is not available */
  FLEXAVATAR_ERROR_DEVICE = 5,           /* a device call failed */
  FLEXAVATAR_ERROR_OUT_OF_MEMORY = 6,
  FLEXAVATAR_ERROR_INVALID_HANDLE = 7,   /* NULL, destroyed or foreign handle */
  FLEXAVATAR_ERROR_BUNDLE_INVALID = 8,   /* manifest.json missing, not JSON, wrong schema or field */
  FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING = 9,
  FLEXAVATAR_ERROR_BUNDLE_HASH_MISMATCH = 10, /* a file's size or sha256 differs from the manifest */
  FLEXAVATAR_ERROR_MODEL = 11,           /* ONNX Runtime could not load or run a model */
  FLEXAVATAR_ERROR_NO_AVATAR_CODE = 12,  /* render/decode before an avatar code was set */
  FLEXAVATAR_ERROR_IO = 13,              /* reading a file failed */
  FLEXAVATAR_ERROR_INTERNAL = 14,        /* a bug: please report the message */
  FLEXAVATAR_ERROR_NO_FRAME = 15         /* render_view before a decode / render of the current avatar code */
} flexavatar_status;

/* Where the models run (ONNX Runtime's execution provider) and, with rasterizer AUTO, where frames are
 * rasterized. */
typedef enum flexavatar_device {
  FLEXAVATAR_DEVICE_AUTO = 0, /* CUDA where available (execution provider; rasterizer), else the CPU; never GPU/NPU */
  FLEXAVATAR_DEVICE_CPU = 1,
  FLEXAVATAR_DEVICE_CUDA = 2, /* fails with FLEXAVATAR_ERROR_UNAVAILABLE when ONNX Runtime has no CUDA, or (with
                                 rasterizer AUTO) the CUDA rasterizer library or the CUDA device is missing */
  /* Appended: GPUs and NPUs without CUDA (AMD, Intel, Apple, Qualcomm; as the Python runtime's devices "gpu" and
   * "npu"), through the first of these execution providers that the loaded ONNX Runtime library has, in this order:
   *   GPU: DirectML (DmlExecutionProvider), MIGraphX, ROCm, CoreML (ModelFormat MLProgram, MLComputeUnits
   *        CPUAndGPU), WebGPU, OpenVINO (device_type GPU);
   *   NPU: QNN (backend_type htp), VitisAI, CoreML (MLProgram, CPUAndNeuralEngine), OpenVINO (device_type NPU).
   * The decoder and the encoders run on it, with ONNX Runtime's CPU provider below it for the nodes it does not take
   * (an encoder the provider cannot open runs on the CPU provider instead, its fp32 file: it runs once per avatar;
   * info.encoder_provider and info.encoder_fallback say so);
   * their inputs and outputs stay host arrays (ONNX Runtime copies them to the device and back in each run), each
   * graph's leading dynamic dim is pinned to 1 (static shapes: NPU compilers take no others), and the
   * frames are drawn by the CPU rasterizer from them (rasterizer AUTO; rasterizer CUDA uploads the Gaussians, as from
   * the CPU provider). options.cuda_device is the device's index for DirectML, MIGraphX and ROCm (their device_id)
   * and OpenVINO (device_type "GPU.N" / "NPU.N"); a non-zero index for a provider that picks its device itself
   * (CoreML, WebGPU, QNN, VitisAI) is FLEXAVATAR_ERROR_INVALID_ARGUMENT. FLEXAVATAR_ERROR_UNAVAILABLE when the library
   * has none of them (the message names those looked for, those it has, and the ONNX Runtime builds that have
   * them), or when the provider cannot be added or cannot open a model file (the message names it and gives ONNX
   * Runtime's reason): never a session quietly moved to the CPU. A run the provider fails is FLEXAVATAR_ERROR_DEVICE
   * naming it. info.decoder_provider names the provider. Precision INT8: FLEXAVATAR_ERROR_INVALID_ARGUMENT.
   * MIGraphX and WebGPU are added through ONNX Runtime's generic entry point, which takes them by name in recent
   * releases (1.32 does; an older one answers that the name is unknown: FLEXAVATAR_ERROR_UNAVAILABLE). Unlike the
   * Python runtime, the C API of ONNX Runtime 1.21 that this library uses cannot say how many of a graph's nodes the
   * provider took. */
  FLEXAVATAR_DEVICE_GPU = 3,
  FLEXAVATAR_DEVICE_NPU = 4
} flexavatar_device;

typedef enum flexavatar_rasterizer {
  FLEXAVATAR_RASTERIZER_AUTO = 0, /* CUDA when device is AUTO or CUDA, libflexavatar_cuda loads and the device exists;
                                     else (device CPU, GPU, NPU too) the CPU */
  FLEXAVATAR_RASTERIZER_CPU = 1,
  FLEXAVATAR_RASTERIZER_CUDA = 2  /* fails with FLEXAVATAR_ERROR_UNAVAILABLE without the library or the device */
} flexavatar_rasterizer;

/* Which of the bundle's ONNX files run: fp32, the fp16 ones (fp16 weights and compute with float32
 * inputs/outputs and precision-sensitive ops kept in float32: made for GPUs; on the CPU provider fp16 is not
 * faster), or the int8 decoders (made for CPUs). The encoder falls back to fp32 when the bundle has no encoder of
 * that precision (there are no int8 encoders). */
typedef enum flexavatar_precision {
  FLEXAVATAR_PRECISION_FP32 = 0,
  FLEXAVATAR_PRECISION_FP16 = 1, /* FLEXAVATAR_ERROR_BUNDLE_INVALID when the bundle has no fp16 ONNX decoder */
  FLEXAVATAR_PRECISION_INT8 = 2  /* int8 MatMul weights, activations quantized at run time: lossy (~30-40 dB
                                    rendered PSNR against fp32; the export's target is 30 dB). ONNX Runtime's CPU
                                    provider only: device AUTO runs the decoder there (the rasterizer may still be
                                    CUDA's), device CUDA, GPU or NPU fails with FLEXAVATAR_ERROR_INVALID_ARGUMENT.
                                    FLEXAVATAR_ERROR_BUNDLE_INVALID when the bundle has no int8 ONNX decoder
                                    (flexavatar-export --precision fp32,int8) */
} flexavatar_precision;

/* Which decoder file runs when the bundle has both a portable ONNX decoder (format "onnx") and one with ONNX
 * Runtime's fused contrib kernels (format "onnx-ort", e.g. decoder.fp16.ort.onnx: com.microsoft
 * SkipLayerNormalization / FastGelu; export target onnx-ort). The fused file launches fewer kernels per frame,
 * which is what a GPU frame is bound by; on a compute-bound CPU it measured 0.96-0.98x the portable file. The
 * encoders always run their portable file (the exporter writes no fused encoders). */
typedef enum flexavatar_fused_decoders {
  FLEXAVATAR_FUSED_DECODERS_AUTO = 0, /* the fused file first when the decoder runs on CUDA (device CUDA, or AUTO
                                         with the CUDA rasterizer), the portable one first elsewhere; either when
                                         the bundle has only one. Unlike the Python runtime, no second try: when
                                         ONNX Runtime cannot open the chosen file, runtime creation fails (OFF
                                         then runs the portable file) */
  FLEXAVATAR_FUSED_DECODERS_ON = 1,   /* the fused file first everywhere (the portable one when there is none) */
  FLEXAVATAR_FUSED_DECODERS_OFF = 2   /* the portable file only (FLEXAVATAR_ERROR_BUNDLE_INVALID without one) */
} flexavatar_fused_decoders;

/* Which fields of flexavatar_frame flexavatar_runtime_render fills (flexavatar_runtime_options.frame_outputs). With
 * the CUDA rasterizer each one is a copy from the device: RGBA8 alone is 4 of a frame's 24 bytes a pixel (1 MiB
 * instead of 6 MiB at 512 x 512), which is most of a frame's read-back time. The fields not asked for are NULL. */
#define FLEXAVATAR_FRAME_RGBA8 1u /* rgba */
#define FLEXAVATAR_FRAME_RGB 2u   /* rgb */
#define FLEXAVATAR_FRAME_ALPHA 4u /* alpha */
#define FLEXAVATAR_FRAME_DEPTH 8u /* depth */
#define FLEXAVATAR_FRAME_ALL 15u

/* Which inputs flexavatar_runtime_create_avatar_code accepts (flexavatar_runtime_info.encoders). */
#define FLEXAVATAR_ENCODER_IMAGE 1u    /* bundle role "encoder": photo + camera (DINOv2 inside the graph) */
#define FLEXAVATAR_ENCODER_FEATURES 2u /* bundle role "encoder_features": photo + camera + DINOv2 features */

typedef enum flexavatar_verify {
  FLEXAVATAR_VERIFY_FULL = 0, /* sizes and sha256 of every file (default) */
  FLEXAVATAR_VERIFY_SIZE = 1, /* existence and sizes only */
  FLEXAVATAR_VERIFY_NONE = 2
} flexavatar_verify;

typedef struct flexavatar_runtime flexavatar_runtime; /* opaque */

typedef struct flexavatar_runtime_options {
  uint32_t struct_size; /* the caller's sizeof(flexavatar_runtime_options); set by flexavatar_runtime_options_init */
  int32_t device;       /* flexavatar_device */
  int32_t verify;       /* flexavatar_verify */
  int32_t num_threads;  /* CPU threads for ONNX Runtime and the rasterizer; 0 = all cores */
  int32_t cuda_device;  /* CUDA device ordinal (device CUDA / AUTO), for the execution provider and rasterizer;
                           with device GPU / NPU the device index of their provider (see flexavatar_device; with
                           rasterizer CUDA also the CUDA rasterizer's ordinal) */
  int32_t rasterizer;   /* flexavatar_rasterizer (appended: read when struct_size covers it; default AUTO) */
  int32_t precision;    /* flexavatar_precision (appended; default FP32) */
  int32_t cuda_graphs;  /* appended; 1: the decoder replays a CUDA graph (ONNX Runtime's CUDA provider with the CUDA
                           rasterizer, zero copy; elsewhere ignored, see info.cuda_graphs), and so do the encoders
                           (one graph per DINOv2 feature shape). A graph is captured on its first calls, in CUDA's
                           global capture mode: other threads' CUDA work must not synchronise meanwhile (render the
                           first frame, and encode the first photo, before other threads start).
                           Default 1 (also for callers whose struct predates the field); 0 runs the CUDA sessions
                           node by node, which onnxruntime-gpu 1.31.1 aborts at random calls (CUDA error 800) */
  int32_t fused_decoders; /* flexavatar_fused_decoders (appended; default AUTO, also for callers whose struct
                             predates the field); info.decoder_file says which file runs */
  uint32_t frame_outputs; /* appended: FLEXAVATAR_FRAME_* flags, the frame fields flexavatar_runtime_render fills
                             (the others are NULL); 0 (the default) = FLEXAVATAR_FRAME_ALL */
} flexavatar_runtime_options;

typedef struct flexavatar_runtime_info {
  uint32_t struct_size;     /* set by the caller: sizeof(flexavatar_runtime_info) */
  int64_t num_gaussians;    /* G */
  int64_t num_head_tokens;  /* R² (avatar code rows) */
  int64_t code_dim;         /* D */
  int64_t expression_dim;   /* 135 */
  int64_t image_size;       /* S of the encoder (the default render size) */
  int32_t has_bundle_avatar_code; /* the bundle carries avatar_code.npy */
  char decoder_provider[64];      /* the execution provider that runs the decoder (and the encoders), e.g.
                                     "CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider" */
  /* Appended fields: filled when struct_size covers them. */
  char rasterizer[16];            /* "cpu" or "cuda" */
  int32_t rasterizer_device;      /* the CUDA rasterizer's device ordinal; -1 for the CPU rasterizer */
  uint32_t encoders;              /* FLEXAVATAR_ENCODER_* flags; 0: the bundle has no encoder */
  int64_t feature_channels;       /* C of the DINOv2 features input (FLEXAVATAR_ENCODER_FEATURES), else 0 */
  char decoder_precision[8];      /* "fp32", "fp16" or "int8": the decoder file that runs */
  int32_t cuda_graphs;            /* 1 when the decoder replays a CUDA graph (options.cuda_graphs took effect) */
  char decoder_file[128];         /* the decoder model file that runs, relative to the bundle folder (e.g.
                                     "decoder.fp16.ort.onnx"), NUL-terminated (truncated to fit) */
  char encoder_provider[64];      /* the execution provider of the encoder that ran last: decoder_provider's, or
                                     "CPUExecutionProvider" where a GPU / NPU provider could not open the encoder
                                     (it runs once per avatar; its fp32 file then runs on the CPU); "" until
                                     flexavatar_runtime_create_avatar_code opened one */
  char encoder_fallback[256];     /* with that CPU fallback: the GPU / NPU provider's error (truncated), else "" */
  int32_t ignored_artifacts;      /* manifest artifacts of a format, role or precision this library does not know
                                     (a newer exporter's): left aside, their files never opened; 0 for most bundles */
  char ignored_names[256];        /* those artifacts, "NAME (format 'x'), ..." (truncated to fit), else "" */
} flexavatar_runtime_info;

/* A decoded frame's Gaussians, [G, ...] float32 each, owned by the runtime. */
typedef struct flexavatar_gaussians {
  int64_t num_gaussians;
  const float* means;     /* [G, 3] */
  const float* quats;     /* [G, 4] wxyz */
  const float* scales;    /* [G, 3] */
  const float* opacities; /* [G] */
  const float* sh0;       /* [G, 3] */
} flexavatar_gaussians;

typedef struct flexavatar_camera {
  float cam2world[16];   /* row-major 4x4, OpenCV axes, rigid (orthonormal rotation, last row 0 0 0 1) */
  float intrinsics[9];   /* row-major 3x3, normalised (rows 0-1 divided by width / height) */
  int32_t width, height; /* pixels, 1 .. 16384 */
  float background[3];   /* RGB in [0, 1] */
} flexavatar_camera;

/* A rendered frame, owned by the runtime (host memory). To composite the avatar over a scene, render with
 * background 0 0 0: rgba (and rgb + alpha) is then premultiplied-alpha colour — blend with (ONE, ONE_MINUS_SRC_ALPHA);
 * straight alpha, as PNG stores it, is rgb / alpha where alpha > 0 (flexavatar-render --alpha writes that). */
typedef struct flexavatar_frame {
  int32_t width, height;
  const uint8_t* rgba; /* [H, W, 4]: colour over the background, alpha = coverage */
  const float* rgb;    /* [H, W, 3] float colour over the background */
  const float* alpha;  /* [H, W] */
  const float* depth;  /* [H, W] expected depth */
} flexavatar_frame;

/* A rendered frame in CUDA device memory, owned by the runtime (flexavatar_runtime_render_device): for
 * display without a copy to the host (CUDA-OpenGL/Vulkan interop, video encoders). The work that writes it
 * is queued on `stream`: order your reads after it (cudaStreamWaitEvent / cudaStreamSynchronize). */
typedef struct flexavatar_device_frame {
  uint32_t struct_size;  /* set by the caller: sizeof(flexavatar_device_frame) */
  int32_t width, height;
  int32_t cuda_device;   /* device ordinal of the pointers */
  void* stream;          /* cudaStream_t of the runtime */
  const uint8_t* rgba;   /* device [H, W, 4] */
  const float* rgb;      /* device [H, W, 3] */
  const float* alpha;    /* device [H, W] */
  const float* depth;    /* device [H, W] */
} flexavatar_device_frame;

/* The bundle's numerics check through this runtime (flexavatar_runtime_check_numerics), as flexavatar-verify's
 * "decoder" and "encoder" rows: per Gaussian output the max |error| against the PyTorch fp32 outputs recorded at
 * export (check.npz), and the worst frame's PSNR between the decoded and the recorded Gaussians, both rendered by
 * this runtime's rasterizer at image_size² on white from the check's camera. The targets are the export's: 60 dB
 * for an fp32 decoder, 40 dB for fp16, 30 dB for int8 (the decoder's, for the encoder row too: its frames come out
 * of the same decoder). */
typedef struct flexavatar_numerics {
  uint32_t struct_size;     /* set by the caller: sizeof(flexavatar_numerics) */
  int32_t passed;           /* 1: every decoded value finite and every frame at or above target_db */
  int32_t num_expressions;  /* frames checked */
  double psnr_db;           /* the worst frame's; +inf when the frames are identical */
  double target_db;
  double max_abs_error[5];  /* means, quats, scales, opacities, sh0 */
  /* The encoder, when the runtime has one for the check's inputs (not with a code-folded decoder): the check
   * photo → its code (against the recorded one) → the decoder → the worst frame, also held to target_db. */
  int32_t encoder_checked;
  double code_max_abs_error;
  double encoder_psnr_db;   /* +inf when identical; 0 when not checked */
} flexavatar_numerics;

/* A photo to encode into an avatar code (flexavatar_runtime_create_avatar_code). */
typedef struct flexavatar_encoder_input {
  uint32_t struct_size;   /* sizeof(flexavatar_encoder_input); set by flexavatar_encoder_input_init */
  const float* image;     /* [3, S, S] channel-major RGB float32 in [0, 1], matted on white; S = info.image_size */
  int64_t image_count;    /* 3·S·S */
  float cam2world[16];    /* the photo's camera, row-major 4x4, OpenCV axes (init: the demo's frontal camera,
                             1 m in front of the head) */
  float intrinsics[9];    /* normalised (init: fx = fy = 1500/512, principal point 0.5) */
  const float* features;  /* DINOv2 ViT-B/14-reg patch features [C, h, w] of the photo, for bundles exported
                             without DINOv2 (FLEXAVATAR_ENCODER_FEATURES); NULL otherwise */
  int64_t feature_channels, feature_height, feature_width; /* C, h, w of features */
} flexavatar_encoder_input;

/* ---- library ---- */
FLEXAVATAR_API uint32_t flexavatar_api_version(void);    /* FLEXAVATAR_API_VERSION of the library */
FLEXAVATAR_API const char* flexavatar_version(void);     /* package version, e.g. "0.1.0" */
FLEXAVATAR_API const char* flexavatar_status_name(flexavatar_status status);
/* Message of the last failed call on this thread ("" if none); valid until this thread's next call. */
FLEXAVATAR_API const char* flexavatar_last_error(void);

/* ---- runtime ---- */
/* Defaults (device AUTO, verify FULL, everything else 0 = its default) into the first struct_size bytes of
 * options; struct_size is the caller's sizeof(flexavatar_runtime_options). FLEXAVATAR_ERROR_INVALID_SIZE when
 * it is smaller than the first version of the struct; larger sizes fill what this library knows (and zero the
 * rest). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_options_init(flexavatar_runtime_options* options,
                                                                 uint32_t struct_size);
/* Opens and validates the bundle folder (manifest, files, hashes) and creates the decoder session.
 * options may be NULL (defaults). On failure *out is set to NULL. */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_create(const char* bundle_dir,
                                                           const flexavatar_runtime_options* options,
                                                           flexavatar_runtime** out);
FLEXAVATAR_API void flexavatar_runtime_destroy(flexavatar_runtime* runtime);
FLEXAVATAR_API flexavatar_status flexavatar_runtime_get_info(const flexavatar_runtime* runtime,
                                                             flexavatar_runtime_info* info);

/* The avatar code, [R², D] float32 (count = R²·D). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_set_avatar_code(flexavatar_runtime* runtime, const float* code,
                                                                    int64_t count);
/* Reads an avatar code .npy file ((R², 1, D) or (1, R², D) or (R², D) float32, little endian);
 * npy_path NULL reads the bundle's own avatar_code.npy (hash-checked). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_load_avatar_code(flexavatar_runtime* runtime,
                                                                     const char* npy_path);
/* Copies the current avatar code, [R², D] float32 (count = R²·D), into code. */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_get_avatar_code(const flexavatar_runtime* runtime, float* code,
                                                                    int64_t count);

/* No image, no features and the demo's frontal camera, into the first struct_size bytes of input (the caller's
 * sizeof(flexavatar_encoder_input)); the same size rules as flexavatar_runtime_options_init. */
FLEXAVATAR_API flexavatar_status flexavatar_encoder_input_init(flexavatar_encoder_input* input, uint32_t struct_size);
/* Runs the bundle's encoder on one photo and makes its code the runtime's avatar code (as
 * flexavatar.runtime.Runtime.create_avatar). The encoder session is created on first use, on the decoder's
 * execution provider. With features: the bundle's "encoder_features" graph; without: its "encoder" graph
 * (FLEXAVATAR_ERROR_UNAVAILABLE when the bundle has only the other one, or none). The image must be finite
 * and in [0, 1] (values up to 1e-3 outside are clipped); on failure the previous code stays. */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_create_avatar_code(flexavatar_runtime* runtime,
                                                                       const flexavatar_encoder_input* input);

/* Runs the decoder on one expression (expression_dim floats). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_decode(flexavatar_runtime* runtime, const float* expression,
                                                           int64_t expression_count, flexavatar_gaussians* out);
/* decode + rasterize: one RGBA frame in host memory (with the CUDA rasterizer: the fields of
 * options.frame_outputs copied from the device, the call's one wait for the GPU after the first frame). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_render(flexavatar_runtime* runtime, const float* expression,
                                                           int64_t expression_count,
                                                           const flexavatar_camera* camera, flexavatar_frame* out);
/* decode + rasterize, the frame left in CUDA device memory (no copy to the host). Needs the CUDA
 * rasterizer (info.rasterizer "cuda"), else FLEXAVATAR_ERROR_UNAVAILABLE. The call waits for the decoder's
 * count of non-finite values and the rasterizer's intersection count (a frame is never handed out unchecked). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_render_device(flexavatar_runtime* runtime,
                                                                  const float* expression, int64_t expression_count,
                                                                  const flexavatar_camera* camera,
                                                                  flexavatar_device_frame* out);

/* The Gaussians of the last flexavatar_runtime_decode / _render / _render_device seen from another camera, without
 * running the decoder: after one render, a call per further view gives a stereo pair (or V views of one frame) for
 * one decode. Each frame is the runtime's, valid until its next decode / render / render_view call: copy or upload
 * it before the next view. FLEXAVATAR_ERROR_NO_FRAME before any decode or render, after one that failed (whatever
 * the reason: a headset app never shows the previous frame's Gaussians in one eye), and after set / load /
 * create_avatar_code or check_numerics, which replace the decoded frame. */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_render_view(flexavatar_runtime* runtime,
                                                                const flexavatar_camera* camera,
                                                                flexavatar_frame* out);
/* render_view with the frame left in CUDA device memory (as flexavatar_runtime_render_device). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_render_view_device(flexavatar_runtime* runtime,
                                                                       const flexavatar_camera* camera,
                                                                       flexavatar_device_frame* out);

/* Runs the bundle's numerics check (see flexavatar_numerics) on this runtime's provider, precision and
 * rasterizer: what the export checked on its machine, checked where the runtime runs (a GPU's kernels, a
 * library version, a CPU's compute precision). The check's avatar code is used for the check and the runtime's
 * own code is restored after it. FLEXAVATAR_ERROR_UNAVAILABLE for a bundle without a check set (re-export). */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_check_numerics(flexavatar_runtime* runtime,
                                                                  flexavatar_numerics* out);

/* The bundle's default camera: the avatar photo's camera when the bundle has one, else a frontal camera
 * 1 m in front of the head with the encoder's field of view; image_size x image_size, white background. */
FLEXAVATAR_API flexavatar_status flexavatar_runtime_default_camera(const flexavatar_runtime* runtime,
                                                                   flexavatar_camera* camera);

/* ---- head pose ---- */
/* The official GUI's rigid head pose of an expression code (135 floats): rotation 6D at [126:132] (Gram–Schmidt
 * of its two 3-vectors, the matrix rows are b1, b2, b1 x b2), translation at [132:135]. head_to_world: row-major
 * 4x4 moving the decoded Gaussians (canonical head frame) to the posed head, x' = R x + t.
 * FLEXAVATAR_ERROR_INVALID_SIZE unless expression_count is 135; FLEXAVATAR_ERROR_INVALID_ARGUMENT for NaN/inf
 * or a degenerate rotation (e.g. all zeros). */
FLEXAVATAR_API flexavatar_status flexavatar_expression_head_pose(const float* expression, int64_t expression_count,
                                                                 float head_to_world[16]);
/* Shows the head pose of `expression` from `camera`: camera->cam2world := head_to_world^-1 * cam2world (in double).
 * Rendering with the result gives the pixels of the posed Gaussians without moving them, as the Python
 * runtime's render(..., apply_head_pose=True); call it per frame on a copy of the unposed camera. */
FLEXAVATAR_API flexavatar_status flexavatar_camera_apply_head_pose(flexavatar_camera* camera, const float* expression,
                                                                   int64_t expression_count);

/* ---- input files ---- */
#define FLEXAVATAR_NPY_MAX_DIMS 8
/* Reads a NumPy .npy array of floats (little-endian, C order) as float32: float32 as it is, float64 (numpy's
 * default) and float16 converted as numpy's astype(float32) does — a photo [S, S, 3], DINOv2 features [C, h, w], an
 * avatar code. Two calls: with values NULL (count ignored) it sets *ndim and shape[0 .. ndim); then with count =
 * the product of the shape it fills values. FLEXAVATAR_ERROR_IO when the file cannot be read;
 * FLEXAVATAR_ERROR_INVALID_ARGUMENT when it is not such an array (not .npy, another dtype, Fortran order, more than
 * FLEXAVATAR_NPY_MAX_DIMS dimensions); FLEXAVATAR_ERROR_INVALID_SIZE when its data does not match its shape or
 * count is not the number of values. */
FLEXAVATAR_API flexavatar_status flexavatar_read_npy(const char* path, float* values, int64_t count,
                                                     int64_t shape[FLEXAVATAR_NPY_MAX_DIMS], int32_t* ndim);

/* ---- photos ---- */
/* Reads a photo as the encoder's input (flexavatar_encoder_input.image): [3, H, W] float32 in [0, 1], channel-major,
 * as flexavatar-render --avatar reads one. A PNG: 8-bit samples / 255 (16-bit grey / 65535, other 16-bit samples by
 * their high byte, as Pillow), palettes looked up, transparency (alpha channel, tRNS) composited onto white; every
 * PNG colour type, bit depth and interlacing; chunk CRCs and the data's Adler-32 checked; an EXIF orientation is not
 * applied (save the photo upright). Or an in-the-wild example .npz (../shared/fixtures/driving/einstein.npz and the
 * others): its model-input crop 'image' [H, W, 3] (or RGBA [H, W, 4], composited onto white), uint8 / 255 or float
 * in [0, 1]; flexavatar_read_photo_camera reads the camera it was taken with. The format is told by the bytes. The
 * encoder wants S x S (info.image_size): crop and resize first. Two calls: with image NULL (count ignored) it sets
 * *width and *height; then with count = 3·W·H floats it fills image. FLEXAVATAR_ERROR_IO when the file cannot be
 * read; FLEXAVATAR_ERROR_INVALID_ARGUMENT when it is neither (a JPEG is named as one) or is damaged or truncated;
 * FLEXAVATAR_ERROR_INVALID_SIZE when count is not 3·W·H. */
FLEXAVATAR_API flexavatar_status flexavatar_read_photo(const char* path, float* image, int64_t count, int32_t* width,
                                                       int32_t* height);
/* The camera an in-the-wild example .npz's photo was taken with (its cam2world [4, 4] in the canonical head frame
 * and normalised intrinsics [3, 3], row-major), for flexavatar_encoder_input: encoding the crop with it, as the
 * official pipeline does, rather than with the demo's frontal camera. FLEXAVATAR_ERROR_INVALID_ARGUMENT for a file
 * without them (a PNG carries no camera), FLEXAVATAR_ERROR_IO when it cannot be read. */
FLEXAVATAR_API flexavatar_status flexavatar_read_photo_camera(const char* path, float cam2world[16],
                                                              float intrinsics[9]);

/* ---- expression sequences ---- */
/* Reads an expression sequence file as flexavatar-render does: a .npy [E, 135] (or [135]: one frame; float32, or
 * float64 / float16 converted as by flexavatar_read_npy), or an .npz (np.savez or np.savez_compressed) whose member
 * 'expression_codes' is one: the layout of tracked sequences (their other members are not read). The format is told by the file's bytes, not its name. Two calls: with codes
 * NULL (count ignored) it sets *frames to E; then with codes holding count = E·135 floats it fills them, row-major
 * [E, 135], and sets *frames again. FLEXAVATAR_ERROR_IO when the file cannot be opened or read;
 * FLEXAVATAR_ERROR_INVALID_ARGUMENT when it is not such an array (neither .npy nor .npz, damaged or truncated
 * archive data (CRC-32 checked), no 'expression_codes' (the message lists the members), another dtype or shape) or
 * holds NaN/inf (the message names the first such frame); FLEXAVATAR_ERROR_INVALID_SIZE when count is not E·135. */
FLEXAVATAR_API flexavatar_status flexavatar_read_expressions(const char* path, float* codes, int64_t count,
                                                             int64_t* frames);
/* The tracked camera of every frame of a tracked sequence .npz (flexavatar-render --camera-tracked): its members
 * cam2world [E, 4, 4] (in the canonical head frame: rendering the decoded Gaussians from it shows the head as the
 * tracked video saw it, head motion included; do not also apply the head pose) and intrinsics [E, 3, 3]
 * (normalised), floats (as flexavatar_read_npy reads them). Two calls as flexavatar_read_expressions: with cameras NULL it sets *frames to E; then
 * with count = E cameras it sets their cam2world and intrinsics and leaves width, height and background as the
 * caller set them. FLEXAVATAR_ERROR_IO, FLEXAVATAR_ERROR_INVALID_ARGUMENT (not an .npz, a damaged archive, a
 * member missing or of another dtype or shape, NaN/inf) and FLEXAVATAR_ERROR_INVALID_SIZE as there. Whether each
 * cam2world is rigid is checked where a camera is used (render). */
FLEXAVATAR_API flexavatar_status flexavatar_read_sequence_cameras(const char* path, flexavatar_camera* cameras,
                                                                  int64_t count, int64_t* frames);

#ifdef __cplusplus
}
#endif

#endif /* FLEXAVATAR_FLEXAVATAR_H_ */
