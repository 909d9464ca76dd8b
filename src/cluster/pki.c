#include "pki.h"
