/* The part of onnxruntime's C API that the sim's graph engine calls (engine.c).
 *
 * onnxruntime exports one symbol, OrtGetApiBase; everything else is a table of function
 * pointers (OrtApi) returned by GetApi(version). The table is append-only across releases, so
 * an entry's position never changes and a table asked for at an old version is valid in every
 * newer library. We ask for version ORT_SIM_API_VERSION and reach each function by its
 * position (facts from include/onnxruntime/core/session/onnxruntime_c_api.h of the public
 * onnxruntime repository; declarations here are written for our use only).
 *
 * Every function returning OrtStatus* returns NULL on success; a non-NULL status carries an
 * error code and message and must be released with ReleaseStatus.
 */
#ifndef AA_SIM_ORT_API_H
#define AA_SIM_ORT_API_H

#include <stddef.h>
#include <stdint.h>

#define ORT_SIM_API_VERSION 13 /* onnxruntime 1.13+; the wheel we load is newer */

typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtTypeInfo OrtTypeInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtAllocator OrtAllocator;
typedef struct OrtRunOptions OrtRunOptions;

/* ONNX TensorProto element types (the same numbering as onnx.TensorProto.DataType). */
enum {
    ORT_T_UNDEFINED = 0,
    ORT_T_FLOAT = 1,
    ORT_T_UINT8 = 2,
    ORT_T_INT8 = 3,
    ORT_T_UINT16 = 4,
    ORT_T_INT16 = 5,
    ORT_T_INT32 = 6,
    ORT_T_INT64 = 7,
    ORT_T_STRING = 8,
    ORT_T_BOOL = 9,
    ORT_T_FLOAT16 = 10,
    ORT_T_DOUBLE = 11,
    ORT_T_UINT32 = 12,
    ORT_T_UINT64 = 13,
    ORT_T_BFLOAT16 = 16,
};

enum { ORT_ONNX_TYPE_TENSOR = 1 };                    /* ONNXType */
enum { ORT_LOG_FATAL = 4 };                           /* OrtLoggingLevel: errors come back as statuses */
enum { ORT_OPT_ALL = 99 };                            /* GraphOptimizationLevel: ORT_ENABLE_ALL */
enum { ORT_EXEC_SEQUENTIAL = 0 };                     /* ExecutionMode */
enum { ORT_ALLOC_DEVICE = 0, ORT_MEM_DEFAULT = 0 };   /* OrtAllocatorType, OrtMemType */
enum { ORT_CODE_NOT_IMPLEMENTED = 9 };                /* OrtErrorCode */

typedef struct OrtApi OrtApi;
typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

/* Positions in the OrtApi table. */
enum {
    ORT_GetErrorCode = 1,
    ORT_GetErrorMessage = 2,
    ORT_CreateEnv = 3,
    ORT_CreateSessionFromArray = 8,
    ORT_Run = 9,
    ORT_CreateSessionOptions = 10,
    ORT_SetSessionExecutionMode = 13,
    ORT_SetSessionLogSeverityLevel = 22,
    ORT_SetSessionGraphOptimizationLevel = 23,
    ORT_SetIntraOpNumThreads = 24,
    ORT_SetInterOpNumThreads = 25,
    ORT_SessionGetInputCount = 30,
    ORT_SessionGetOutputCount = 31,
    ORT_SessionGetInputTypeInfo = 33,
    ORT_SessionGetOutputTypeInfo = 34,
    ORT_SessionGetInputName = 36,
    ORT_SessionGetOutputName = 37,
    ORT_CreateTensorWithDataAsOrtValue = 49,
    ORT_GetTensorMutableData = 51,
    ORT_CastTypeInfoToTensorInfo = 55,
    ORT_GetOnnxTypeFromTypeInfo = 56,
    ORT_GetTensorElementType = 60,
    ORT_GetDimensionsCount = 61,
    ORT_GetDimensions = 62,
    ORT_GetSymbolicDimensions = 63,
    ORT_GetTensorTypeAndShape = 65,
    ORT_CreateCpuMemoryInfo = 69,
    ORT_AllocatorFree = 76,
    ORT_GetAllocatorWithDefaultOptions = 78,
    ORT_ReleaseEnv = 92,
    ORT_ReleaseStatus = 93,
    ORT_ReleaseMemoryInfo = 94,
    ORT_ReleaseSession = 95,
    ORT_ReleaseValue = 96,
    ORT_ReleaseTypeInfo = 98,
    ORT_ReleaseTensorTypeAndShapeInfo = 99,
    ORT_ReleaseSessionOptions = 100,
    ORT_AddSessionConfigEntry = 130,
};

/* The signatures of the entries above. */
typedef int (*ort_GetErrorCode_fn)(const OrtStatus *);
typedef const char *(*ort_GetErrorMessage_fn)(const OrtStatus *);
typedef OrtStatus *(*ort_CreateEnv_fn)(int level, const char *logid, OrtEnv **out);
typedef OrtStatus *(*ort_CreateSessionFromArray_fn)(const OrtEnv *, const void *data, size_t len,
                                                     const OrtSessionOptions *, OrtSession **out);
typedef OrtStatus *(*ort_Run_fn)(OrtSession *, const OrtRunOptions *, const char *const *input_names,
                                 const OrtValue *const *inputs, size_t n_inputs, const char *const *output_names,
                                 size_t n_outputs, OrtValue **outputs);
typedef OrtStatus *(*ort_CreateSessionOptions_fn)(OrtSessionOptions **out);
typedef OrtStatus *(*ort_SetOptionInt_fn)(OrtSessionOptions *, int value);
typedef OrtStatus *(*ort_SessionGetCount_fn)(const OrtSession *, size_t *out);
typedef OrtStatus *(*ort_SessionGetTypeInfo_fn)(const OrtSession *, size_t index, OrtTypeInfo **out);
typedef OrtStatus *(*ort_SessionGetName_fn)(const OrtSession *, size_t index, OrtAllocator *, char **out);
typedef OrtStatus *(*ort_CreateTensorWithData_fn)(const OrtMemoryInfo *, void *data, size_t len, const int64_t *shape,
                                                  size_t rank, int elem_type, OrtValue **out);
typedef OrtStatus *(*ort_GetTensorMutableData_fn)(OrtValue *, void **out);
typedef OrtStatus *(*ort_CastTypeInfoToTensorInfo_fn)(const OrtTypeInfo *, const OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*ort_GetOnnxType_fn)(const OrtTypeInfo *, int *out);
typedef OrtStatus *(*ort_GetTensorElementType_fn)(const OrtTensorTypeAndShapeInfo *, int *out);
typedef OrtStatus *(*ort_GetDimensionsCount_fn)(const OrtTensorTypeAndShapeInfo *, size_t *out);
typedef OrtStatus *(*ort_GetDimensions_fn)(const OrtTensorTypeAndShapeInfo *, int64_t *dims, size_t n);
typedef OrtStatus *(*ort_GetSymbolicDimensions_fn)(const OrtTensorTypeAndShapeInfo *, const char **names, size_t n);
typedef OrtStatus *(*ort_GetTensorTypeAndShape_fn)(const OrtValue *, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*ort_CreateCpuMemoryInfo_fn)(int alloc_type, int mem_type, OrtMemoryInfo **out);
typedef OrtStatus *(*ort_AllocatorFree_fn)(OrtAllocator *, void *p);
typedef OrtStatus *(*ort_GetDefaultAllocator_fn)(OrtAllocator **out);
typedef void (*ort_Release_fn)(void *object);
typedef OrtStatus *(*ort_AddSessionConfigEntry_fn)(OrtSessionOptions *, const char *key, const char *value);

#endif /* AA_SIM_ORT_API_H */
