/* placeholder */
#include "kernels.h"
const sim_op sim_ops_shape[] = {{NULL, 0, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0}};
